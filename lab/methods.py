"""Training methods: which TRL trainer turns preference pairs into a LoRA adapter, and what it needs.

METHODS is the registry the settings (TrainConfig.method), the app's menus, the Train tab's plots and the cards
read. A method says:
  - label: its name in the app;
  - reference: whether it trains against a frozen reference model (DPO, KTO: the base with the adapter disabled, or
    the adapter it continues from) or is reference-free (SimPO, ORPO: no reference pass, nothing to precompute);
  - trainer(): TRL's trainer and config classes (imported only when training);
  - args(cfg): the method's own TRL config fields, from the lab's TrainConfig;
  - rows(records): the training rows TRL wants from lab.pairs records (paired prompt/chosen/rejected for DPO; one
    desirable and one undesirable row per pair for KTO, where a spot-check verdict in meta["human"] sets the labels);
  - loss_types(): the values its --loss-type may take (read from TRL itself, not typed again here); the first is
    its default (an empty --loss-type);
  - plots: plot title -> the metric names it logs (metrics.jsonl) that the Train tab draws (at most MAX_PLOTS).
TRL's experimental trainers (CPO for SimPO, ORPO) warn on import; TRL_EXPERIMENTAL_SILENCE=1 quiets that.
To add a method: one entry here (TRL does the loss), a test that it trains and its adapter loads, a line in
docs/training.md.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

MAX_PLOTS = 3  # plots the Train tab has room for


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
    meta = ast.literal_eval(meta)
    if meta.get("choices"):  # newer configs list them as metadata (KTOConfig, CPOConfig)
        return tuple(meta["choices"])
    text = meta["help"]
    possible = text.split("Possible values are:", 1)[-1].split(". ", 1)[0] if "Possible values" in text else text
    return tuple(dict.fromkeys(re.findall(r"`'?([a-z_]+)'?`", possible)))


def unpaired_rows(records: list[dict]) -> list[dict]:
    """KTO's rows: each pair becomes one desirable (label True) and one undesirable (label False) completion of its
    prompt. A spot-check verdict (meta["human"], lab.spotcheck.label_pairs: "chosen" | "rejected" | "tie") wins: a
    person who preferred the rejected answer flips the labels, a tie drops the pair (it says neither is better)."""
    rows = []
    for r in records:
        human = (r.get("meta") or {}).get("human")
        if human == "tie":
            continue
        good, bad = (r["rejected"], r["chosen"]) if human == "rejected" else (r["chosen"], r["rejected"])
        rows += [{"prompt": r["prompt"], "completion": good, "label": True},
                 {"prompt": r["prompt"], "completion": bad, "label": False}]
    return rows


def _dpo_trainer():
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer, DPOConfig


def _kto_trainer():
    from trl import KTOConfig, KTOTrainer

    return KTOTrainer, KTOConfig


def _cpo_trainer():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOTrainer, CPOConfig


def _orpo_trainer():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer, ORPOConfig


def _dpo_args(cfg) -> dict:
    return {"beta": cfg.beta, "loss_type": cfg.losses()}


def _kto_args(cfg) -> dict:
    return {"beta": cfg.beta, "loss_type": cfg.losses()[0]}


def _simpo_args(cfg) -> dict:
    """SimPO is CPO's "simpo" loss with the behaviour-cloning term off (cpo_alpha 0; TRL's CPO-SimPO keeps it)."""
    return {"beta": cfg.beta, "loss_type": "simpo", "cpo_alpha": 0.0}


def _orpo_args(cfg) -> dict:
    return {"beta": cfg.beta}  # ORPO's lambda: the weight of the odds-ratio term next to the SFT loss


@dataclass(frozen=True)
class Method:
    label: str
    reference: bool
    trainer: Callable[[], tuple[type, type]]
    args: Callable[[object], dict]
    rows: Callable[[list[dict]], list[dict]]
    loss_types: Callable[[], tuple[str, ...]]
    plots: dict[str, tuple[str, ...]]
    multi_loss: bool = False  # several loss types may be combined (DPO's "sigmoid,sft")
    min_batch: int = 1  # rows a device's batch needs at least (KTO: 2), with the reason, for --batch-size's message
    min_batch_why: str = ""


LOSS = {"Loss": ("loss",)}
MARGIN = {"Reward margin and accuracy": ("rewards/margins", "rewards/accuracies")}
LOGPS = {"Log-prob of chosen vs rejected": ("logps/chosen", "logps/rejected")}

METHODS: dict[str, Method] = {
    "dpo": Method(
        label="DPO (Rafailov et al. 2023; TRL DPOTrainer)", reference=True, trainer=_dpo_trainer, args=_dpo_args,
        rows=paired_rows, loss_types=lambda: trl_choices("trl.trainer.dpo_config", "DPOConfig", "loss_type"),
        plots={**LOSS, **MARGIN, **LOGPS}, multi_loss=True),
    "kto": Method(
        label="KTO (Ethayarajh et al. 2024; TRL KTOTrainer)", reference=True, trainer=_kto_trainer, args=_kto_args,
        rows=unpaired_rows, loss_types=lambda: trl_choices("trl.trainer.kto_config", "KTOConfig", "loss_type"),
        plots={**LOSS, "KL to the reference and reward margin": ("kl", "rewards/margins"), **LOGPS}, min_batch=2,
        min_batch_why="KTO estimates its KL term from the other rows of a batch, so with one row a batch it equals "
                      "the reward and TRL stops"),
    "simpo": Method(
        label="SimPO (Meng et al. 2024, reference-free; TRL CPOTrainer)", reference=False, trainer=_cpo_trainer,
        args=_simpo_args, rows=paired_rows, loss_types=lambda: ("simpo",),
        plots={**LOSS, **MARGIN, "Mean token log-prob of chosen vs rejected": ("logps/chosen", "logps/rejected")}),
    "orpo": Method(
        label="ORPO (Hong et al. 2024, reference-free; TRL ORPOTrainer)", reference=False, trainer=_orpo_trainer,
        args=_orpo_args, rows=paired_rows, loss_types=lambda: ("orpo",),
        plots={"Loss and its SFT part": ("loss", "nll_loss"), "Log odds ratio": ("log_odds_ratio", "log_odds_chosen"),
               **MARGIN}),
}
