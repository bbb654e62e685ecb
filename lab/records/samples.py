"""samples.jsonl: one line per response of the sample stage (lab.sample), also for the comparison's scoring runs
and the self-rewarding rounds; built by `sample_record`:

    {"instruction_id": str, "sample_index": int, "prompt": str, "text": str,
     "model": spec, "model_path": str,
     "adapter": str | null,                   # the LoRA adapter folder that was switched on (null: the base)
     "decoding": {"temperature", "top_p", "max_new_tokens", "seed"},
     "prompt_tokens": int, "completion_tokens": int,
     "finish_reason": "stop" | "length",      # end-of-turn token, or max_new_tokens reached
     "duplicate_of": int | null}              # sample_index of an identical earlier response to the same prompt

`groups(run)` is the one reader that gathers a run's samples per instruction (judge, rank, pairs, spot-check and the
app all use it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.store import Run

if TYPE_CHECKING:
    from lab.generation import Completion


def sample_record(instruction_id: str, sample_index: int, prompt: str, completion: Completion, model: str,
                  model_path: str, decoding: dict, duplicate_of: int | None = None,
                  adapter: str | None = None) -> dict:
    """One samples.jsonl line (the format in the module docstring)."""
    return {"instruction_id": instruction_id, "sample_index": sample_index, "prompt": prompt, "text": completion.text,
            "model": model, "model_path": model_path, "adapter": adapter, "decoding": decoding,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason, "duplicate_of": duplicate_of}


@dataclass
class Group:
    """The samples of one instruction, by sample_index (a repeated index keeps its last line)."""

    instruction_id: str
    prompt: str
    samples: list[dict] = field(default_factory=list)

    @property
    def indices(self) -> list[int]:
        return [int(s["sample_index"]) for s in self.samples]

    @property
    def texts(self) -> list[str]:
        return [s["text"] for s in self.samples]

    def distinct(self) -> dict[int, str]:
        """{sample index: text} of the responses worth comparing: not empty, not a duplicate of an earlier one."""
        return {int(s["sample_index"]): s["text"] for s in self.samples
                if s.get("duplicate_of") is None and s["text"].strip()}


def groups(run: Run, required: bool = True) -> list[Group]:
    """samples.jsonl per instruction: in instructions.jsonl order, then any other instruction in first-seen order.
    required: a run without samples is a LabError saying to sample first (else an empty list)."""
    samples = run.read("samples")
    if not samples and required:
        raise LabError(f"Run '{run.name}' has no samples yet: run the Sample stage first (`python -m lab sample "
                       f"--run {run.name}`).", ui=f"Run '{run.name}' has no samples yet: sample first in the Sample "
                       "tab.")
    by_id: dict[str, dict[int, dict]] = {}
    for s in samples:
        by_id.setdefault(s["instruction_id"], {})[int(s["sample_index"])] = s
    order = [i["id"] for i in run.read("instructions") if i["id"] in by_id]
    order += [i for i in by_id if i not in set(order)]
    return [Group(i, next(iter(by_id[i].values()))["prompt"], [by_id[i][j] for j in sorted(by_id[i])]) for i in order]
