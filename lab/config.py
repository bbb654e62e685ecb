"""Settings of every stage: one dataclass per stage, each field with a default and a one-line help.

The same dataclass fills the command line (`add_arguments` / `from_args`), the app's forms, and run.json
(`asdict`). Field names become flags: `max_new_tokens` -> `--max-new-tokens`. Secrets are never fields: API keys and
hub tokens come from the environment (or the app's session) at the moment of use.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lab.errors import LabError


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A settings field: its default and the one line that explains it (shown by --help and in the app)."""
    return field(default=default, metadata={"help": help, "choices": choices})


class Settings:
    """Mixin: dataclass <-> argparse, plus validation hooks."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = type(f.default) if f.default is not None else str
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                    help=f.metadata.get("help"))
            else:
                parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                    help=f"{f.metadata.get('help')} (default: {f.default})")

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


@dataclass
class SampleConfig(Settings):
    model: str = opt("bundled", "model spec: hub id, local folder, 'bundled' or 'tiny-random'")
    instructions: str = opt("bundled", "instruction source: 'lima', 'bundled', or a .jsonl/.csv/.txt file")
    n: int = opt(50, "how many instructions to take from the source")
    k: int = opt(5, "responses per instruction")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)")
    max_new_tokens: int = opt(256, "longest response, in tokens")
    seed: int = opt(0, "seed for picking instructions and for sampling")
    batch_size: int = opt(64, "sequences generated together (lower it if memory runs out)")
    device: str = opt("auto", "cpu, cuda, cuda:1 ... or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "SampleConfig":
        if self.k < 1:
            raise LabError(f"--k must be at least 1 (got {self.k}): it is the number of responses per instruction.")
        if self.n < 1:
            raise LabError(f"--n must be at least 1 (got {self.n}).")
        if not 1 <= self.max_new_tokens <= 8192:
            raise LabError(f"--max-new-tokens must be between 1 and 8192 (got {self.max_new_tokens}); "
                           "256-512 is typical for chat answers.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise LabError("--temperature must be >= 0 and --top-p in (0, 1].")
        if self.batch_size < 1:
            raise LabError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        return self


@dataclass
class PushConfig(Settings):
    namespace: str = opt("", "Hub user or organisation to push to (default: the owner of the token)")
    prefix: str = opt("", "start of every repo name (default: the run name): <prefix>-<source>, <prefix>-<adapter>")
    private: bool = opt(True, "create the repos private (--no-private makes them public)")
    datasets: bool = opt(True, "push each preference data set (pairs-<source>.jsonl, with samples and judgments)")
    adapters: bool = opt(True, "push each trained adapter with its model card")
    only: str = opt("", "comma-separated pair sources / adapter names to push (default: all)")
    iterations: bool = opt(True, "also push the data sets and adapters of self-rewarding iterations")
    endpoint: str = opt("", "Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    dry_run: bool = opt(False, "write the folders that would be uploaded under <run>/hub/ and push nothing")

    def validate(self) -> "PushConfig":
        import re

        name = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
        for label, value in (("--namespace", self.namespace), ("--prefix", self.prefix)):
            if value and not name.match(value):
                raise LabError(f"{label} {value!r} is not a valid Hub name: use letters, digits, '-', '_' or '.'.")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise LabError(f"--endpoint must be a URL such as https://huggingface.co (got {self.endpoint!r}).")
        if not (self.datasets or self.adapters):
            raise LabError("Nothing to push: --no-datasets and --no-adapters were both given.")
        return self
