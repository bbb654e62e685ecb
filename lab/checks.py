"""Verifiable instructions: a judge that knows the answer.

An instruction may carry IFEval's checks (Zhou et al. 2023, google/IFEval): `instruction_id_list`, the check types
("punctuation:no_comma", "length_constraints:number_words", ...), and `kwargs`, one dict of arguments per type
({"num_words": 40, "relation": "less than"}). The checkers are IFEval's own, from the if-verifiable package (its
copy of google-research's instructions.py and its evaluation: strict on the response as it is; loose where any of
eight variants passes, the response without its first and/or last line and/or without markdown asterisks). Like
IFEval's harness, the package first strips surrounding whitespace and a reasoning model's <think>...</think> block
(only what follows it is checked; an answer that opens <think> and never closes it counts as empty). Nothing
here re-implements a check: this module validates the arguments, runs the package's checkers and records results.

Offline: IFEval's `length_constraints:number_sentences` and `change_case:capital_word_frequency` need nltk's punkt
data, which nltk downloads at run time. Where that data is missing they are refused when the instructions are read
(NEEDS_NLTK_DATA), with how to get it, rather than failing mid-run; the bundled set does not use them.

checks.jsonl, one line per response checked (rewritten whole by `check_run`, deterministic from the samples):

    {"instruction_id": str, "sample_index": int,
     "results": [{"type": str, "strict": bool, "loose": bool}, ...],   # in instruction_id_list order
     "strict": bool, "loose": bool,                                    # prompt level: every check passed
     "score": float}                                                   # mean over checks of (strict + loose) / 2

`score` orders a run's responses for the checks pair source (lab.pairs): a strict pass counts 1, a pass only after
the loose transformations 0.5, a fail 0. The four IFEval accuracies (`accuracies`) are the usual ones: prompt level
(every check of a prompt passed) and instruction level (each check counted alone), strict and loose.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from lab.errors import LabError
from lab.store import Run

CHECK_FIELDS = ("instruction_id_list", "kwargs")  # IFEval's column names, kept as they are in every record
# nltk 3.9+ loads punkt's English model as PunktTokenizer, from the punkt_tab data, for both checkers
NEEDS_NLTK_DATA = {"length_constraints:number_sentences": "tokenizers/punkt_tab",
                   "change_case:capital_word_frequency": "tokenizers/punkt_tab"}
PROMPT_ARGS = ("prompt", "prompt_to_repeat")  # filled from the instruction's prompt, not from kwargs
LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
LEVEL_LABELS = {"prompt_strict": "prompt-level strict", "prompt_loose": "prompt-level loose",
                "instruction_strict": "instruction-level strict", "instruction_loose": "instruction-level loose"}


@functools.cache
def registry() -> dict:
    """IFEval's check types -> checker classes (if-verifiable's copy of IFEval's instructions_registry)."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return dict(INSTRUCTION_DICT)


@functools.cache
def nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


def _checker(kind: str, kwargs: dict, prompt: str):
    """A built checker; its arguments are IFEval's (None values are unset, as in the google/IFEval table)."""
    checker = registry()[kind](kind)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:  # IFEval's repeat-the-prompt check reads the prompt itself
        checker.build_description(prompt=prompt)
    return checker


def validate(types, kwargs, prompt: str, where: str) -> tuple[list[str], list[dict]]:
    """IFEval check fields of one instruction -> (types, kwargs), or a LabError saying what to fix."""
    if isinstance(types, str) or not isinstance(types, (list, tuple)) or not types:
        raise LabError(f"{where}: instruction_id_list must be a non-empty list of IFEval check types, like "
                       '["punctuation:no_comma"].')
    kwargs = [{} for _ in types] if kwargs is None else kwargs
    if not isinstance(kwargs, (list, tuple)) or len(kwargs) != len(types) or not all(
            isinstance(k, dict) or k is None for k in kwargs):
        raise LabError(f"{where}: kwargs must be a list of {len(types)} objects, one per check type (use {{}} for a "
                       "check without arguments).")
    kwargs = [dict(k or {}) for k in kwargs]
    for kind, kw in zip(types, kwargs):
        _validate_one(kind, kw, prompt, where)
    return list(types), kwargs


def _validate_one(kind, kw: dict, prompt: str, where: str) -> None:
    if kind not in registry():
        raise LabError(f"{where}: {kind!r} is not an IFEval check type; known types: "
                       f"{', '.join(sorted(registry()))}.")
    if kind in NEEDS_NLTK_DATA and not nltk_has(NEEDS_NLTK_DATA[kind]):
        raise LabError(f"{where}: the check {kind!r} needs nltk's {NEEDS_NLTK_DATA[kind].split('/')[1]} data, which "
                       f"is not on this machine: run `python -m nltk.downloader {NEEDS_NLTK_DATA[kind].split('/')[1]}`"
                       " where the internet is reachable, or leave this check type out.")
    try:
        checker = _checker(kind, kw, prompt)
        checker.check_following("A short answer.")  # a value of the wrong type fails here, not mid-run
    except Exception as e:  # the checkers raise ValueError / TypeError / KeyError on arguments they do not take
        raise LabError(f"{where}: the arguments {kw} do not fit the check {kind!r} ({type(e).__name__}: "
                       f"{str(e)[:160]}): give IFEval's argument names and values for it.") from None
    missing = [k for k in checker.get_instruction_args_keys() if k not in PROMPT_ARGS and kw.get(k) is None]
    if missing:  # IFEval's checkers draw a missing argument at random, anew on every check: never a fixed test
        raise LabError(f"{where}: the check {kind!r} needs the arguments {', '.join(missing)} (IFEval fills a "
                       "missing one at random on every check, so the answer would be graded against a moving "
                       "target): give them in kwargs.")


def fields_of(record: dict) -> dict:
    """The check fields of an instruction record ({} when it carries none: a table row of a mixed set holds an
    empty instruction_id_list)."""
    if not record.get("instruction_id_list") and not isinstance(record.get("instruction_id_list"), str):
        return {}
    return {k: record[k] for k in CHECK_FIELDS if record.get(k) is not None}


def has_checks(record: dict) -> bool:
    return bool(record.get("instruction_id_list"))


@dataclass(frozen=True)
class Checked:
    """One response checked against its instruction's checks."""

    results: list[dict]  # [{"type", "strict", "loose"}] in instruction_id_list order

    @property
    def strict(self) -> bool:
        return bool(self.results) and all(r["strict"] for r in self.results)

    @property
    def loose(self) -> bool:
        return bool(self.results) and all(r["loose"] for r in self.results)

    @property
    def score(self) -> float:
        return sum((r["strict"] + r["loose"]) / 2 for r in self.results) / len(self.results) if self.results else 0.0

    def failed(self, loose: bool = False) -> list[str]:
        return [r["type"] for r in self.results if not r["loose" if loose else "strict"]]


def check(instruction: dict, text: str) -> Checked:
    """Run an instruction's checks on one response (if-verifiable's evaluation, strict and loose)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(text, list(instruction["instruction_id_list"]),
                                       list(instruction.get("kwargs") or [{}] * len(instruction["instruction_id_list"])),
                                       instruction["prompt"], registry())
    if not results:  # an empty response: the package returns no results; every check failed
        return Checked([{"type": t, "strict": False, "loose": False} for t in instruction["instruction_id_list"]])
    return Checked([{"type": r.instruction_id, "strict": r.strict_pass, "loose": r.loose_pass} for r in results])


def check_record(instruction_id: str, sample_index: int, checked: Checked) -> dict:
    return {"instruction_id": instruction_id, "sample_index": sample_index, "results": checked.results,
            "strict": checked.strict, "loose": checked.loose, "score": round(checked.score, 4)}


def instructions_with_checks(run: Run) -> dict[str, dict]:
    """{instruction id: its record} for the run's instructions that carry checks."""
    return {r["id"]: r for r in run.read("instructions") if has_checks(r)}


def check_run(run: Run) -> list[dict]:
    """Check every sampled response whose instruction carries checks; rewrite checks.jsonl whole and return it."""
    from lab.records.samples import groups

    known = instructions_with_checks(run)
    if not known:
        raise LabError(f"Run '{run.name}' has no instructions with checks: sample a verifiable set (--instructions "
                       "checks, or a file with IFEval's instruction_id_list and kwargs).",
                       ui=f"Run '{run.name}' has no instructions with checks: sample the bundled verifiable set "
                       "(Instructions: checks) or a file with IFEval's instruction_id_list and kwargs first.")
    out = [check_record(g.instruction_id, i, check(known[g.instruction_id], text))
           for g in groups(run) if g.instruction_id in known for i, text in zip(g.indices, g.texts)]
    run.write("checks", out)
    return out


def accuracies(checked: list[Checked]) -> dict[str, float]:
    """IFEval's four accuracies over a list of checked responses (one per prompt)."""
    results = [r for c in checked for r in c.results]
    return {"prompt_strict": _share([c.strict for c in checked]), "prompt_loose": _share([c.loose for c in checked]),
            "instruction_strict": _share([r["strict"] for r in results]),
            "instruction_loose": _share([r["loose"] for r in results])}


def per_prompt(c: Checked) -> dict[str, float]:
    """One prompt's contribution to each accuracy (instruction level: its share of checks passed). The instruction
    level mean over prompts weights each prompt equally, IFEval's pools every check; they agree when every prompt
    has the same number of checks (as in the bundled sets), and the bootstrap resamples prompts either way."""
    return {"prompt_strict": float(c.strict), "prompt_loose": float(c.loose),
            "instruction_strict": _share([r["strict"] for r in c.results]),
            "instruction_loose": _share([r["loose"] for r in c.results])}


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
