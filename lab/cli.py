"""`python -m lab <stage> ...`: each subcommand is a thin wrapper over one core function.

Stage modules are imported inside the command functions so that `--help` stays fast (no torch import).
Exit status: 0 done (or stopped on request), 2 a problem the user can fix (the message says what), 1 a bug.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from lab.errors import LabError


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def _stage_parser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with the --run every stage takes."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.add_argument("--run", required=True, help="run name: letters, digits, '.', '_', '-' (a folder under "
                   "$LAB_RUNS_DIR, default ./runs; not a path)")
    return p


# ---- sample -------------------------------------------------------------------------------------------------------
def add_sample(sub) -> None:
    from lab.config import SampleConfig

    p = _stage_parser(sub, "sample", "generate K responses per instruction with the model's chat template")
    SampleConfig.add_arguments(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> None:
    from lab.config import SampleConfig
    from lab.sample import sample_run
    from lab.store import Run

    _print_summary(sample_run(Run.open(args.run), SampleConfig.from_args(args)))


# ---- push ---------------------------------------------------------------------------------------------------------
def add_push(sub) -> None:
    from lab.config import PushConfig

    p = _stage_parser(sub, "push", "push the run's preference data sets and adapters to the Hub, with cards",
                       description="Stages each repo under <run>/hub/<repo>/ and uploads that folder. The token comes "
                                   "from $HF_TOKEN (or `hf auth login`); it is never written anywhere.")
    PushConfig.add_arguments(p)
    p.set_defaults(func=cmd_push)


def cmd_push(args) -> None:
    from lab.config import PushConfig
    from lab.hub import push_run
    from lab.store import Run

    _print_summary(push_run(Run.open(args.run, create=False), PushConfig.from_args(args)))


# ---- train --------------------------------------------------------------------------------------------------------
def add_train(sub) -> None:
    from lab.config import TrainConfig

    p = _stage_parser(sub, "train", "train a LoRA adapter with DPO on a preference data set (TRL + PEFT)",
                       description="Trains runs/<run>/adapters/<adapter>/ (docs/training.md). Runs unchanged under "
                                   "`accelerate launch -m lab train ...` on several GPUs. Rerunning an interrupted "
                                   "or stopped training resumes it from its last checkpoint.")
    p.add_argument("--pairs", required=True, help="'judge', 'pairrm' (the run's pairs-<source>.jsonl) or a FILE")
    p.add_argument("--adapter", required=True, help="name of the adapter folder to write under <run>/adapters/")
    p.add_argument("--init-adapter", default=None,
                   help="continue from this adapter (a name in the run, or a folder); it is also the DPO reference")
    TrainConfig.add_arguments(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    from lab.config import TrainConfig
    from lab.store import Run
    from lab.train import is_main_process, read_state, train_adapter

    out = train_adapter(Run.open(args.run), args.pairs, args.adapter, TrainConfig.from_args(args),
                        init_adapter=args.init_adapter)
    if is_main_process():
        state = read_state(out)
        for warning in state["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        _print_summary({"adapter": str(out), "status": state["status"], "steps": state["global_step"],
                        "pairs": {k: state["pairs"][k] for k in ("n_train", "n_eval")}, "final": state["final"]})


# ---- rank ---------------------------------------------------------------------------------------------------------
def add_rank(sub) -> None:
    from lab.config import RankConfig

    p = _stage_parser(sub, "rank", "rank each instruction's responses with PairRM (llm-blender)",
                       description="Compares every pair of responses in both orders and appends rankings.jsonl "
                                   "(format: lab/rank.py). Instructions already ranked with the same ranker are skipped.")
    RankConfig.add_arguments(p)
    p.set_defaults(func=cmd_rank)


def cmd_rank(args) -> None:
    from lab.config import RankConfig
    from lab.progress import Progress
    from lab.rank import rank_run
    from lab.store import Run

    _print_summary(rank_run(Run.open(args.run, create=False), RankConfig.from_args(args), Progress("ranking")))


# ---- pairs --------------------------------------------------------------------------------------------------------
def add_pairs(sub) -> None:
    from lab.config import PairsConfig

    p = _stage_parser(sub, "pairs", "build chosen/rejected pairs (TRL format) from the judge's verdicts or PairRM",
                       description="Rewrites pairs-<source>.jsonl (format: lab/pairs.py) and prints its statistics: "
                                   "pair count, instructions without a pair, length balance, judge-vs-PairRM agreement.")
    PairsConfig.add_arguments(p)
    p.set_defaults(func=cmd_pairs)


def cmd_pairs(args) -> None:
    from lab.config import PairsConfig
    from lab.pairs import build_pairs
    from lab.store import Run

    summary = build_pairs(Run.open(args.run, create=False), PairsConfig.from_args(args))
    if summary.get("length_warning"):
        print(f"warning: {summary['length_warning']}", file=sys.stderr)
    _print_summary(summary)


# ---- judge --------------------------------------------------------------------------------------------------------
def add_judge(sub) -> None:
    from lab.config import JudgeConfig

    p = _stage_parser(sub, "judge", "LLM judge: pairwise verdicts in both orders (groq, openai-compatible, local)")
    p.add_argument("--estimate-only", action="store_true", help="print the plan's calls, time and cost; judge nothing")
    JudgeConfig.add_arguments(p)
    p.set_defaults(func=cmd_judge)


def cmd_judge(args) -> None:
    from lab.config import JudgeConfig
    from lab.judge import estimate, judge_run
    from lab.store import Run

    run, cfg = Run.open(args.run, create=False), JudgeConfig.from_args(args)
    plan = estimate(run, cfg)
    print("plan: " + json.dumps(plan, ensure_ascii=False), file=sys.stderr, flush=True)  # the cost, before any call
    if not args.estimate_only:
        _print_summary(judge_run(run, cfg))


# ---- compare ------------------------------------------------------------------------------------------------------
def add_compare(sub) -> None:
    from lab.config import CompareConfig

    p = _stage_parser(sub, "compare", "base vs adapters on held-out instructions: grid, win rates, length, diversity")
    p.add_argument("--export", default="csv,jsonl,md", help="grid exports written into the run: csv, jsonl, md "
                   "(comma-separated; '' = none)")
    CompareConfig.add_arguments(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> None:
    from lab.compare import compare_run, export
    from lab.config import CompareConfig
    from lab.store import Run

    run = Run.open(args.run, create=False)
    summary = compare_run(run, CompareConfig.from_args(args))
    summary["exports"] = [str(export(run, f.strip())) for f in args.export.split(",") if f.strip()]
    _print_summary(summary)


# ---- iterate ------------------------------------------------------------------------------------------------------
def add_iterate(sub) -> None:
    from lab.config import IterateConfig

    p = _stage_parser(sub, "iterate", "self-rewarding DPO: sample, score yourself, train on best vs worst, repeat")
    IterateConfig.add_arguments(p)
    p.set_defaults(func=cmd_iterate)


def cmd_iterate(args) -> None:
    from lab.config import IterateConfig
    from lab.iterate import iterate_run
    from lab.store import Run

    _print_summary(iterate_run(Run.open(args.run, create=False), IterateConfig.from_args(args)))


STAGES = [add_sample, add_judge, add_rank, add_pairs, add_train, add_compare, add_iterate, add_push]  # pipeline order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="Preference Lab: sample -> judge / rank -> pairs -> DPO train -> compare -> iterate -> push.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for add in STAGES:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lab.hosting import admit
    from lab.jobs import report_exit
    from lab.progress import Stopped, close_bars, install_stop_handler
    from lab.store import redact_userinfo

    args = build_parser().parse_args(argv)
    install_stop_handler()
    try:
        admit(args)  # a hosted app's rules and the owner's caps (lab.hosting, lab.limits), before anything is written
        args.func(args)
    except LabError as e:
        close_bars()
        msg = redact_userinfo(str(e))  # a URL's user:password never reaches the terminal, the job log or exit.json
        print(f"error: {msg}", file=sys.stderr)
        report_exit(2, "failed", msg)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        close_bars()
        msg = str(e) or "Stopped; everything finished so far is saved."
        print(msg, file=sys.stderr)
        report_exit(0, "stopped", msg)
        return 0 if isinstance(e, Stopped) else 130
    except Exception as e:  # a bug: keep the traceback for the log, give the app one line
        print(redact_userinfo(traceback.format_exc()), file=sys.stderr, end="")
        report_exit(1, "failed", redact_userinfo(f"{type(e).__name__}: {e}"))
        return 1
    report_exit(0, "done")
    return 0
