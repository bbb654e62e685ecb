"""Training methods: which TRL trainer turns preference pairs into a LoRA adapter, and what it needs.

METHODS is the registry the settings (TrainConfig.method), the app's menus, the Train tab's plots and the cards
read. A method says:
  - label: its name in the app;
  - reference: whether it trains against a frozen reference model (DPO: the base with the adapter disabled, or the
    adapter it continues from) or is reference-free;
  - trainer(): TRL's trainer and config classes (imported only when training);
  - args(cfg): the method's own TRL config fields, from the lab's TrainConfig;
  - rows(records): the training rows TRL wants from lab.pairs records (paired prompt/chosen/rejected for DPO);
  - loss_types(): the values its --loss-type may take (read from TRL itself, not typed again here);
  - plots: plot title -> the metric names it logs (metrics.jsonl) that the Train tab draws.
To add a method: one entry here (TRL does the loss), a test that it trains and its adapter loads, a line in
docs/training.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable


def paired_rows(records: list[dict]) -> list[dict]:
    """TRL's conversational preference rows: prompt / chosen / rejected ("meta" is the lab's, not TRL's)."""
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]


@lru_cache(maxsize=None)
def trl_choices(module: str, cls: str, field: str) -> tuple[str, ...]:
    """The values a TRL config field documents as possible (its help text lists them in backticks), so the lab
    follows the installed TRL instead of a copied list. Read from the module's source, without importing it (that
    would import torch and transformers: seconds at the app's start)."""
    import ast
    import importlib.util

    tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    assign = next(n for n in node.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == field)
    meta = next(kw.value for kw in assign.value.keywords if kw.arg == "metadata")
    text = ast.literal_eval(meta)["help"]
    possible = text.split("Possible values are:", 1)[-1].split(". ", 1)[0] if "Possible values" in text else text
    return tuple(dict.fromkeys(re.findall(r"`'?([a-z_]+)'?`", possible)))


def _dpo_trainer():
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer, DPOConfig


def _dpo_args(cfg) -> dict:
    return {"beta": cfg.beta, "loss_type": cfg.losses()}


@dataclass(frozen=True)
class Method:
    label: str
    reference: bool
    trainer: Callable[[], tuple[type, type]]
    args: Callable[[object], dict]
    rows: Callable[[list[dict]], list[dict]]
    loss_types: Callable[[], tuple[str, ...]]
    plots: dict[str, tuple[str, ...]]


METHODS: dict[str, Method] = {
    "dpo": Method(
        label="DPO (Rafailov et al. 2023; TRL DPOTrainer)", reference=True, trainer=_dpo_trainer, args=_dpo_args,
        rows=paired_rows, loss_types=lambda: trl_choices("trl.trainer.dpo_config", "DPOConfig", "loss_type"),
        plots={"Loss": ("loss",), "Reward margin and accuracy": ("rewards/margins", "rewards/accuracies"),
               "Log-prob of chosen vs rejected": ("logps/chosen", "logps/rejected")}),
}
