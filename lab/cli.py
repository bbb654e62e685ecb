"""`python -m lab <stage> ...`: every stage is one row of lab.stages.STAGES; the CLI holds no stage logic.

A row names the stage's settings dataclass (its fields are the stage's flags) and its module's `run(run, settings,
progress) -> summary dict` that runs it; the CLI parses the flags into the settings (`--config FILE`: a YAML file or
a run.json gives them first, flags override; lab.configfile), checks a hosted app's rules
(lab.hosting), runs the function and prints its summary as JSON (a summary's "warnings" also go to stderr). Every
summary carries "noise": the labels of results that are noise (lab.noise), each also a `noise:` line on stderr.
The app starts the same command lines as jobs (lab.jobs), so a terminal can do anything the app does.
Exit status: 0 done (or stopped on request), 2 a problem the user can fix (the message says what), 1 a bug.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

from lab import doctor
from lab.configfile import read_config
from lab.errors import LabError
from lab.hosting import admit
from lab.jobs import report_exit
from lab.noise import notes
from lab.progress import Progress, Stopped, close_bars, stop_signals
from lab.stages import BY_NAME, STAGES
from lab.store import Run, redact_userinfo


@dataclass(frozen=True)
class Tool:
    """A subcommand that needs no run: fn(settings) -> the text it prints."""

    name: str
    settings: type
    run: Callable[..., str]
    help: str


TOOLS = [Tool("doctor", doctor.DoctorConfig, doctor.doctor_command,
              "what this machine can run: device, precision, engines, and a model's memory estimate (no run needed)")]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def build_parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The command line; `defaults` ({field: value}, from a --config file) replace the fields' own defaults of the
    stage being parsed, so flags given on the command line still win."""
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="Preference Lab: sample -> judge / rank / score -> pairs -> train -> compare -> iterate -> "
                    "merge -> push; chat with a model.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.description or stage.help)
        p.add_argument("--run", required=True, help="run name (a folder under $LAB_RUNS_DIR, default ./runs)")
        p.add_argument("--config", default=None, metavar="FILE", help="read the settings from a YAML file "
                       "(setting: value) or a run's run.json; flags given here override it")
        stage.settings.add_arguments(p)
        p.set_defaults(**(defaults or {}))
    for tool in TOOLS:
        tool.settings.add_arguments(sub.add_parser(tool.name, help=tool.help, description=tool.help))
    parser.commands = sub.choices  # {name: its parser}: an unknown flag is told in the command's own usage
    return parser


def parse_known(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args, except that an unknown flag is an error of the command it follows (its usage, and the
    flag it was probably meant to be), not of the top-level parser."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.stage]
        known = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        flags = [x.split("=")[0] for x in extra if x.startswith("-")]
        hint = "; ".join(f"{f}: did you mean {g[0]}?" for f in flags if (g := difflib.get_close_matches(f, known, n=1)))
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({hint})" if hint else ""))
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, a --config file's settings under the flags given (LabError for a bad file)."""
    args = parse_known(build_parser(), argv)
    if not getattr(args, "config", None):  # tools (doctor) take no settings file
        return args
    stage = BY_NAME[args.stage]
    values = read_config(args.config, stage.settings, stage.entry(vars(args)))
    return parse_known(build_parser(values), argv)


def run_stage(args: argparse.Namespace) -> dict:
    """Run the stage the parsed command line names; -> its summary."""
    stage = BY_NAME[args.stage]
    cfg = stage.settings.from_args(args)
    admit(stage.name, args.run, cfg)  # a hosted app's rules and the owner's caps, before anything is written
    run = Run.open(args.run, create=stage.new_run)
    summary = stage.run(run, cfg, Progress(stage.name))
    return {**summary, "noise": notes(run, stage.name, cfg.to_dict())}


def print_summary(summary: dict) -> None:
    for warning in summary.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    for note in summary.get("noise") or []:
        print(note, file=sys.stderr)  # each starts "Noise:" or "Weak judge:"
    if summary.get("length_warning"):
        print(f"warning: {summary['length_warning']}", file=sys.stderr)
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))


INTERRUPTED = ("Interrupted: the records each stage had finished are saved (a training's up to its last "
               "checkpoint).")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = BY_NAME.get(next((a for a in argv if not a.startswith("-")), ""))
    plain = named is not None and not named.stops  # no safe points to stop at: Ctrl-C quits at once
    with stop_signals(ctrl_c=not plain):
        return _main(argv, plain)


def _main(argv: list[str], plain: bool) -> int:
    try:
        args = parse_args(argv)
        if args.stage in TOOLS_BY_NAME:
            tool = TOOLS_BY_NAME[args.stage]
            print(tool.run(tool.settings.from_args(args)))
            return 0
        summary = run_stage(args)
        if _is_main_process():
            print_summary(summary)
    except LabError as e:
        close_bars()
        msg = redact_userinfo(str(e))  # a URL's user:password never reaches the terminal, the job log or exit.json
        print(f"error: {msg}", file=sys.stderr)
        report_exit(2, "failed", msg, redact_userinfo(e.ui) if e.ui else None)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        close_bars()
        msg = str(e) if isinstance(e, Stopped) and str(e) else "Interrupted." if plain else INTERRUPTED
        msg += "" if "again" in msg or plain else " Run the same command again to resume."
        print(msg, file=sys.stderr)
        report_exit(0, "stopped", msg)
        return 0 if isinstance(e, Stopped) else 130
    except Exception as e:  # a bug: keep the traceback for the log, give the app one line
        traceback.print_exc()
        report_exit(1, "failed", f"{type(e).__name__}: {e}")
        return 1
    report_exit(0, "done")
    return 0


def _is_main_process() -> bool:
    """Only rank 0 prints under `accelerate launch` (every rank runs the stage)."""
    return int(os.environ.get("RANK", "0")) == 0
