"""`python -m lab <stage> ...`: every stage is one row of STAGES, a thin wrapper over one core function.

A row names the stage's settings dataclass (its fields are the stage's flags) and the function `fn(run, settings,
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
import importlib
import json
import os
import sys
import traceback
from dataclasses import dataclass

from lab.configfile import read_config
from lab.errors import LabError
from lab.hosting import admit
from lab.jobs import report_exit
from lab.noise import notes
from lab.progress import Progress, Stopped, close_bars, stop_signals
from lab.store import Run, redact_userinfo


@dataclass(frozen=True)
class Stage:
    name: str
    settings: str  # "module:Class" of its settings dataclass
    run: str  # "module:function" (run, settings, progress) -> summary dict
    help: str
    description: str = ""
    new_run: bool = False  # may start a new run (else the run must exist)


STAGES = [  # pipeline order
    Stage("sample", "lab.sample:SampleConfig", "lab.sample:sample_run",
          "generate K responses per instruction with the model's chat template", new_run=True),
    Stage("judge", "lab.judge:JudgeConfig", "lab.cli:judge_stage",
          "LLM judge: pairwise verdicts in both orders (groq, openai-compatible, local)",
          "Prints the plan's calls, time and cost first (on stderr), then judges (unless --estimate-only)."),
    Stage("rank", "lab.rank:RankConfig", "lab.rank:rank_run",
          "rank each instruction's responses with PairRM (llm-blender) or a reward model",
          "PairRM compares every pair of responses in both orders, a reward model scores each response alone; "
          "appends rankings.jsonl (format: lab/rank.py). "
          "Instructions already ranked with the same ranker are skipped."),
    Stage("score", "lab.score:ScoreConfig", "lab.score:score_run",
          "self-rewarding scores: each response judged R times with an additive 5-point prompt",
          "Appends scores.jsonl (format: lab/score.py); answers already scored by the same judge are skipped."),
    Stage("pairs", "lab.pairs:PairsConfig", "lab.cli:pairs_stage",
          "build chosen/rejected pairs (TRL format) from the judge's verdicts, PairRM, a reward model or self-scores",
          "Rewrites pairs-<source>.jsonl (format: lab/pairs.py) and prints its statistics: pair count, "
          "instructions without a pair, length balance, judge-vs-ranker agreement (PairRM, reward model)."),
    Stage("train", "lab.train:TrainConfig", "lab.train:train_stage",
          "train a LoRA adapter on a preference data set (TRL + PEFT)",
          "Trains runs/<run>/adapters/<adapter>/ (docs/training.md). Runs unchanged under `accelerate launch -m lab "
          "train ...` on several GPUs. Rerunning an interrupted or stopped training resumes it from its last "
          "checkpoint.", new_run=True),
    Stage("compare", "lab.compare:CompareConfig", "lab.cli:compare_stage",
          "base vs adapters on held-out instructions: grid, win rates, length, diversity"),
    Stage("iterate", "lab.iterate:IterateConfig", "lab.iterate:iterate_run",
          "self-rewarding DPO: sample, score yourself, train on best vs worst, repeat"),
    Stage("merge", "lab.merge:MergeConfig", "lab.merge:merge_run",
          "fold a LoRA adapter into its base (PEFT merge_and_unload): a plain transformers checkpoint",
          "Writes runs/<run>/merged/<adapter>/ (safetensors, tokenizer, model card; lab/merge.py), which loads with "
          "transformers alone; `push` publishes it as a model repo."),
    Stage("chat", "lab.chat:ChatConfig", "lab.chat:chat_run",
          "talk to the base model or an adapter of the run, multi-turn, the reply streamed",
          "With --message, answers it and exits; otherwise every line typed on stdin is a turn (end of input "
          "ends the chat). Replies stream to stderr; the summary with the last reply goes to stdout. Writes "
          "nothing into the run."),
    Stage("report", "lab.report:ReportConfig", "lab.report:report_run",
          "write runs/<run>/report/: tables, figures and judge examples for a write-up (numbers only)",
          "Rewrites the whole folder: README.md (an index), efficiency.csv, judge-examples.md, scores, training "
          "curves per adapter, per-round stability of self-rewarding runs, the comparison grid and your notes."),
    Stage("push", "lab.hub:PushConfig", "lab.cli:push_stage",
          "push the run's preference data sets and adapters to the Hub, with cards",
          "Stages each repo under <run>/hub/<repo>/ and uploads that folder. The token comes from $HF_TOKEN (or "
          "`hf auth login`); it is never written anywhere."),
]
BY_NAME = {s.name: s for s in STAGES}


@dataclass(frozen=True)
class Tool:
    """A subcommand that needs no run: fn(settings) -> the text it prints."""

    name: str
    settings: str
    run: str
    help: str


TOOLS = [Tool("doctor", "lab.doctor:DoctorConfig", "lab.doctor:doctor_command",
              "what this machine can run: device, precision, engines, and a model's memory estimate (no run needed)")]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def load(path: str):
    """'module:name' -> the object."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


# ---- stages whose core function takes other arguments ----------------------------------------------------------------
def judge_stage(run, cfg, progress) -> dict:
    """Print the plan's cost before any call (stderr), then judge; --estimate-only: the plan is the summary."""
    plan = load("lab.judge:estimate")(run, cfg)
    print("plan: " + json.dumps(plan, ensure_ascii=False), file=sys.stderr, flush=True)
    return {"estimate_only": True, "plan": plan} if cfg.estimate_only else load("lab.judge:judge_run")(run, cfg,
                                                                                                         progress)


def pairs_stage(run, cfg, progress) -> dict:
    return load("lab.pairs:build_pairs")(run, cfg)


def compare_stage(run, cfg, progress) -> dict:
    """Compare, then write the grid's exports (--export)."""
    summary = load("lab.compare:compare_run")(run, cfg, progress)
    export = load("lab.compare:export")
    return {**summary, "exports": [str(export(run, f.strip())) for f in cfg.export.split(",") if f.strip()]}


def push_stage(run, cfg, progress) -> dict:
    return load("lab.hub:push_run")(run, cfg, progress=progress)


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
        load(stage.settings).add_arguments(p)
        p.set_defaults(**(defaults or {}))
    for tool in TOOLS:
        load(tool.settings).add_arguments(sub.add_parser(tool.name, help=tool.help, description=tool.help))
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
    values = read_config(args.config, load(BY_NAME[args.stage].settings), args.stage, getattr(args, "source", None))
    return parse_known(build_parser(values), argv)


def run_stage(args: argparse.Namespace) -> dict:
    """Run the stage the parsed command line names; -> its summary."""
    stage = BY_NAME[args.stage]
    cfg = load(stage.settings).from_args(args)
    admit(stage.name, args.run, cfg)  # a hosted app's rules and the owner's caps, before anything is written
    run = Run.open(args.run, create=stage.new_run)
    summary = load(stage.run)(run, cfg, Progress(stage.name))
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


PLAIN_CTRL_C = ("chat", "merge")  # no safe points to stop at: Ctrl-C quits at once, and there is nothing to resume


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plain = next((a for a in argv if not a.startswith("-")), None) in PLAIN_CTRL_C
    with stop_signals(ctrl_c=not plain):
        return _main(argv, plain)


def _main(argv: list[str], plain: bool) -> int:
    try:
        args = parse_args(argv)
        if args.stage in TOOLS_BY_NAME:
            tool = TOOLS_BY_NAME[args.stage]
            print(load(tool.run)(load(tool.settings).from_args(args)))
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
