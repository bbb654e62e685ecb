"""Preference training of one LoRA adapter per preference data set, with TRL's trainers and PEFT.

The method (TrainConfig.method) comes from lab.methods.METHODS: DPO (default) and KTO train against a frozen
reference; SimPO and ORPO are reference-free. The DPO loss (sigmoid DPO, Rafailov et al. 2023), for a prompt x with
chosen y_w and rejected y_l:

    L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

pi is the base model with the LoRA adapter on; ref (methods with a reference) is the same model with the adapter
disabled (no second copy in memory). When training continues from an existing adapter (`init_adapter`, self-rewarding
rounds), TRL copies it into a frozen "ref" adapter, so the reference is the previous round's model; a reference-free
method simply trains that adapter on. Loss types are TRL's (METHODS[...].loss_types).

Input: a pairs file in TRL's conversational format (lab.pairs documents and checks it). Output: an adapter folder,
`runs/<run>/adapters/<name>/` (lab.adapters documents the folder; the model card is lab.cards.model_card). The two
records this module writes there:

    training.json                                    {"status": "training"|"stopped"|"done"|"failed",
                                                      "settings": TrainConfig fields, "method": str,
                                                      "base_model": spec,
                                                      "base_model_path", "init_adapter": str|null,
                                                      "pairs": {"path", "sha256", "n", "n_train", "n_eval",
                                                                "chosen_chars_mean", "rejected_chars_mean",
                                                                "chosen_longer_fraction"},
                                                      "identity": what a resume must match (settings, model,
                                                                  pairs sha256, init adapter),
                                                      "global_step", "max_steps", "final": {metric: value},
                                                      "warnings": [str], "versions": {package: version},
                                                      "started", "finished": unix s, "error": str|null}
    metrics.jsonl                                    one line per logged step (lab.train_monitor)

A stopped training (SIGTERM from the app, Ctrl-C) saves a checkpoint and the adapter trained so far (status
"stopped"); running the same command again resumes from the checkpoint. A crash leaves no adapter_config.json, so
the folder never looks like a finished adapter.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from lab import cards, efficiency, memory, models, precision
from lab.adapters import adapter_lock, check_weights, final_metrics, is_complete, plan_resume, publish, read_state, \
    refuse_finished, reset_folder
from lab.config import Settings, opt
from lab.errors import LabError
from lab.methods import METHODS
from lab.pairs import SOURCES, resolve_pairs
from lab.progress import Progress, Stopped, stop_requested
from lab.records.pairs import check_markup, load_pairs, pair_stats, split_pairs
from lab.spotcheck import label_pairs
from lab.store import Run, adapter_file, atomic_write_json, read_jsonl
from lab.train_monitor import diagnose, metrics_callback

OOM_HINTS = ("out of memory", "can't allocate memory", "cannot allocate memory")
# --report-to: the tracker -> the package transformers' integration needs (opt-in; none is the default)
TRACKERS = {"none": None, "trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb"}
TRACKIO_PROJECT = "preference-lab"



MAX_LR = 1e-2  # above this a LoRA adapter diverges on the first step (a user's lr 1000 'trained' to loss 0.0000)


@dataclass
class TrainConfig(Settings):
    """Preference training (DPO, KTO, SimPO, ORPO) + LoRA settings. docs/training.md explains every field, its
    default and why."""

    pairs: str = opt("", f"the pairs to train on: a source of this run ({', '.join(map(repr, SOURCES))}: its "
                     "pairs-<source>.jsonl) or a pairs .jsonl file", label="Pairs")
    adapter: str = opt("", "name of the adapter folder to write under <run>/adapters/", label="Adapter name")
    init_adapter: str = opt("", "continue from this adapter (a name in the run, or a folder); it is also the frozen "
                            "reference", label="Continue from adapter")
    method: str = opt("dpo", "training method: " + "; ".join(f"{k}: {m.label}" for k, m in METHODS.items()),
                      tuple(METHODS), label="Method")
    model: str = opt("", "base model spec (empty = the model that sampled the run)", label="Base model")
    epochs: float = opt(3.0, "passes over the training pairs (ignored when --max-steps > 0)", label="Epochs")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1 = run the epochs)", label="Max steps")
    lr: float = opt(5e-5, "peak learning rate of the LoRA weights (cosine decay after warm-up)", label="Learning rate")
    warmup_ratio: float = opt(0.1, "fraction of the steps spent warming the learning rate up from 0 (none where "
                              "that is under 2 steps: a warm-up's first step learns nothing)", label="Warm-up ratio")
    beta: float = opt(0.1, "beta: strength of the pull back to the reference (higher = stay closer); SimPO's reward "
                      "scale, ORPO's odds-ratio weight (lambda)", label="Beta")
    loss_type: str = opt("", "TRL loss type of the method, or several joined by ',' for dpo (e.g. sigmoid,sft); "
                         "empty = the method's own (dpo: sigmoid, kto: kto)", label="Loss type")
    lora_r: int = opt(16, "LoRA rank", label="LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / r)", label="LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout (> 0 also turns the model's own dropout back on)",
                              label="LoRA dropout")
    target_modules: str = opt("all-linear", "layers that get LoRA: 'all-linear' or names joined by ','",
                              label="LoRA target modules")
    batch_size: int = opt(4, "pairs per device per forward pass", label="Batch size")
    grad_accum: int = opt(1, "forward passes per optimizer step (effective batch = batch x accum x devices)",
                          label="Gradient accumulation")
    max_length: int = opt(1024, "longest prompt + response in tokens; longer ones are cut at the end",
                          label="Max length (tokens)")
    eval_fraction: float = opt(0.1, "share of the instructions held out for eval loss and reward accuracy",
                               label="Eval fraction")
    eval_steps: int = opt(0, "evaluate every N steps (0 = about 5 times per training)")
    save_steps: int = opt(50, "write a resumable checkpoint every N steps", label="Checkpoint every")
    logging_steps: int = opt(1, "write a metrics line every N steps")
    seed: int = opt(0, "seed for the data order, the eval split and the LoRA init", label="Seed")
    gradient_checkpointing: bool = opt(True, "recompute activations in the backward pass: far less memory, each "
                                       "step ~30% slower (GPU and CPU alike)", label="Gradient checkpointing")
    precompute_ref: bool = opt(True, "compute the reference's log-probs in one pass before training wherever the "
                               "training passes over its pairs more than once (epochs > 1) in one process: later "
                               "passes do not run the reference again (~25% of a step on CPU); methods without a "
                               "reference skip it",
                               label="Precompute reference (multi-pass)")
    resume: bool = opt(True, "continue an interrupted training of the same adapter from its last checkpoint",
                       label="Resume")
    device: str = opt("auto", "cpu, cuda, mps or auto (CUDA, else mps, else CPU); accelerate launch picks per process")
    dtype: str = opt("auto", "auto: bf16 on GPUs of compute capability 8.0+, fp16 mixed precision (loss scaling, fp32 "
                     "LoRA) on older ones such as the T4, fp32 on CPU and mps; or float32, bfloat16, float16")
    load_in_4bit: bool = opt(False, "QLoRA: load the base in 4 bits (NF4, bitsandbytes; CUDA only) so a 3B model "
                             "trains on a 16 GB GPU", label="4-bit base (QLoRA)")
    report_to: str = opt("none", "experiment tracking, opt-in (none: nothing leaves the machine): trackio (local "
                         "first), tensorboard (logs in the adapter's runs/ folder) or wandb", tuple(TRACKERS),
                         label="Report to")

    def losses(self) -> list[str]:
        """The loss types asked for, else the method's default (the first TRL lists)."""
        given = [t.strip() for t in self.loss_type.split(",") if t.strip()]
        return given or list(METHODS[self.method].loss_types()[:1])

    def validate(self) -> "TrainConfig":
        method = METHODS[self.method]
        allowed = method.loss_types()
        bad = [t for t in self.losses() if t not in allowed]
        if bad or (len(self.losses()) > 1 and not method.multi_loss):
            many = "one or more" if method.multi_loss else "one"
            raise LabError(f"--loss-type {self.loss_type!r}: --method {self.method} takes {many} of "
                           f"{', '.join(allowed)} (empty = {allowed[0]}).")
        check_tracker(self.report_to)
        if self.max_steps <= 0 and self.epochs <= 0:
            raise LabError("Give --epochs > 0 or --max-steps > 0: there is nothing to train otherwise.")
        for flag, value in (("--lr", self.lr), ("--beta", self.beta)):
            if not value > 0:
                raise LabError(f"{flag} must be > 0 (got {value}).")
        if self.lr > MAX_LR:
            raise LabError(f"--lr {self.lr:g} is far above what LoRA preference training takes (5e-6 to 5e-4; the "
                           f"default is 5e-5): the weights diverge within a step and the loss reads 0. Use at most "
                           f"{MAX_LR:g}.")
        for flag, value in (("--lora-r", self.lora_r), ("--lora-alpha", self.lora_alpha),
                            ("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum),
                            ("--save-steps", self.save_steps), ("--logging-steps", self.logging_steps)):
            if value < 1:
                raise LabError(f"{flag} must be at least 1 (got {value}).")
        if self.batch_size < method.min_batch:
            raise LabError(f"--method {self.method} needs --batch-size {method.min_batch} or more (got "
                           f"{self.batch_size}): {method.min_batch_why}. Raise it (and lower --grad-accum to keep "
                           "the same pairs a step).")
        if self.max_length < 16:
            raise LabError(f"--max-length {self.max_length} is too short for a prompt and an answer; "
                           "512-2048 is usual.")
        if not self.target_modules.strip(" ,"):
            raise LabError("--target-modules is empty: give 'all-linear' or layer names joined by ',' (q_proj,v_proj).")
        if not 0 <= self.eval_fraction < 0.5 or not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise LabError("--eval-fraction must be in [0, 0.5), --lora-dropout and --warmup-ratio in [0, 1).")
        return self


def check_tracker(name: str) -> None:
    """The tracker's package must be installed (they are optional dependencies): say how, before a model loads."""
    import importlib.util

    package = TRACKERS.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise LabError(f"--report-to {name}: the {package} package is not installed; `pip install {package}` "
                       "(docs/training.md, Tracking), or leave --report-to none.")


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun, else True: only it writes files."""
    return int(os.environ.get("RANK", "0")) == 0


# ---- model, data set, trainer --------------------------------------------------------------------------------------
def load_policy(spec: str, config: TrainConfig, init_adapter: str | None):
    """Base model (+ the adapter to continue from, trainable) and its tokenizer, in the training precision of
    lab.precision's table (a 16-bit base keeps fp32 LoRA weights: PEFT upcasts them), 4-bit with --load-in-4bit."""
    dev, prec = check_device(config)
    if init_adapter:
        check_weights(Path(init_adapter))
    quantized = precision.quantization_kwargs(dev, prec) if config.load_in_4bit else {}
    model, tok = models.load_weights(spec, precision.torch_dtype(prec.load_dtype), **quantized)
    if config.load_in_4bit:
        model = precision.prepare_4bit(model, config.gradient_checkpointing)
    if init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    return model, tok, dev.name


def check_device(config: TrainConfig, spec: str | None = None) -> tuple:
    """(lab.precision Device, TrainPrecision) of a training, or the LabError saying why it cannot run here: the
    device, the dtype, 4-bit loading and (given the model spec) the memory estimate of lab.memory."""
    dev = precision.probe(config.device)
    prec = precision.train_precision(dev, config.dtype)
    if config.load_in_4bit:
        precision.check_4bit(dev)
    if spec:
        need = memory.training_need(memory.model_shape(models.resolve(spec)), prec.load_dtype, dev.kind,
                                    config.lora_r, config.target_modules, config.batch_size, config.max_length,
                                    config.load_in_4bit, config.gradient_checkpointing)
        memory.check_fits(need, dev.kind, dev.name, f"Training {spec} ({prec.mode}, batch {config.batch_size} x "
                          f"{config.max_length} tokens)", "lower --batch-size (raise --grad-accum to keep the "
                          "effective batch) or --max-length, keep --gradient-checkpointing on, add --load-in-4bit "
                          "on a CUDA GPU, or use a smaller model")
    return dev, prec


def lora_targets(config: TrainConfig) -> str | list[str]:
    """--target-modules as PEFT takes it: "all-linear", or a list of module names."""
    targets = config.target_modules.strip()
    return targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=lora_targets(config), task_type="CAUSAL_LM")


def check_target_modules(model, config: TrainConfig, spec: str) -> None:
    """Refuse --target-modules names that match no layer LoRA can adapt (PEFT's rule: the module's full name, or
    its end after a '.'), listing the names that can: PEFT would fail inside the trainer, or skip a misspelt name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(config)
    if targets == "all-linear":
        return
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise LabError(f"--target-modules {', '.join(missing)}: no such layer in {spec} can take LoRA. Use "
                       f"'all-linear', or names joined by ',' from: {', '.join(known)}.")


def planned_steps(config: TrainConfig, n_train: int, world: int) -> int:
    """Optimizer steps the Trainer will run over n_train training rows: max_steps, else epochs x steps per epoch."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(math.ceil(n_train / (config.batch_size * world)) / config.grad_accum)
    return max(1, math.ceil(config.epochs * per_epoch))


def warmup_steps(ratio: float, steps: int) -> int:
    """Warm-up steps for `ratio` of `steps`, or none where that is under 2: transformers' warm-up gives its first
    step learning rate 0, so one warm-up step of a 10-step round (a self-rewarding round, a demo) only loses it."""
    n = int(ratio * steps)
    return n if n >= 2 else 0


def precomputes_ref(config: TrainConfig, n_train: int, world: int) -> bool:
    """Whether the reference log-probs are computed in one pass before training (TRL's precompute_ref_log_probs):
    --precompute-ref (the default), a method with a reference, one process, and more steps than one pass over the
    n_train rows takes. With one pass the reference runs once per row either way, and a separate pass would only add
    a start-up wait (and, under --max-steps, compute rows the steps never reach). Several processes (accelerate
    launch) compute it in every step: TRL keeps the precomputed values in a cache file named per process for
    in-memory data sets, which the other processes cannot find."""
    if not (config.precompute_ref and METHODS[config.method].reference) or world > 1:
        return False
    return planned_steps(config, n_train, world) > planned_steps(replace(config, max_steps=-1, epochs=1.0), n_train,
                                                                 world)


def trainer_args(config: TrainConfig, out: Path, device: str, n_train: int, has_eval: bool):
    """TrainConfig -> the method's TRL config (DPOConfig, KTOConfig, CPOConfig, ORPOConfig). Mixed precision from
    lab.precision (bf16, fp16 with loss scaling, or none); the method's own fields (beta, loss type, the reference's
    precompute: precomputes_ref) from lab.methods; every other field mapped one to one."""
    method = METHODS[config.method]
    _, config_cls = method.trainer()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    eval_every = config.eval_steps or max(1, planned_steps(config, n_train, world) // 5)
    return config_cls(
        output_dir=str(adapter_file(out, "checkpoints")), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.lr, lr_scheduler_type="cosine",
        warmup_steps=warmup_steps(config.warmup_ratio, planned_steps(config, n_train, world)),
        **method.args(config), per_device_train_batch_size=config.batch_size,
        **({"precompute_ref_log_probs": precomputes_ref(config, n_train, world)} if method.reference else {}),
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length, seed=config.seed, data_seed=config.seed,
        gradient_checkpointing=config.gradient_checkpointing,
        **precision.train_precision(precision.probe(device), config.dtype).trainer_flags,
        use_cpu=device == "cpu", disable_dropout=config.lora_dropout == 0, logging_steps=config.logging_steps,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="steps" if has_eval else "no", eval_steps=eval_every, disable_tqdm=True,
        **tracking_args(config, out),
    )


def tracking_args(config: TrainConfig, out: Path) -> dict:
    """TRL/transformers' own logging integrations, only when asked: report_to, the run's name there
    ("<run>/<adapter>"), trackio's project. TensorBoard's folder is set by tracking_env."""
    if config.report_to == "none":
        return {"report_to": []}
    name = f"{out.parent.parent.name}/{out.name}"
    return {"report_to": [config.report_to], "run_name": name,
            **({"project": TRACKIO_PROJECT} if config.report_to == "trackio" else {})}


@contextmanager
def tracking_env(config: TrainConfig, out: Path) -> Iterator[None]:
    """TensorBoard writes into the adapter's folder (adapters/<name>/runs/, never pushed) rather than under the
    checkpoints, which are deleted when training is done: transformers' callback reads TENSORBOARD_LOGGING_DIR when
    the trainer is built, so it is set for that moment only."""
    if config.report_to != "tensorboard":
        yield
        return
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(adapter_file(out, "tracking"))
    try:
        yield
    finally:
        os.environ.pop("TENSORBOARD_LOGGING_DIR") if before is None else os.environ.update(
            TENSORBOARD_LOGGING_DIR=before)


def to_dataset(records: list[dict], method: str = "dpo"):
    """The method's TRL rows from lab.pairs records (the "meta" column is ours, not TRL's, so it stays out), each
    with the lab's chat template arguments: TRL renders conversational rows itself (DPO, KTO tokenize them, CPO and
    ORPO through trl.data_utils.maybe_apply_chat_template; all read a row's "chat_template_kwargs"), and without
    them a Llama-3.2 template would print today's date into the training prompts, not the date sampling used."""
    from datasets import Dataset

    kwargs = dict(models.CHAT_TEMPLATE_KWARGS)
    return Dataset.from_list([{**row, "chat_template_kwargs": kwargs} for row in METHODS[method].rows(records)])


def check_lengths(records: list[dict], tok, max_length: int) -> None:
    """TRL silently drops pairs whose prompt alone fills max_length: refuse when that would leave nothing."""
    too_long = sum(len(tok(models.render_chat(tok, r["prompt"]), add_special_tokens=False)["input_ids"]) >= max_length
                   for r in records)
    if too_long == len(records):
        raise LabError(f"Every prompt is longer than --max-length {max_length} tokens, so no answer token would be "
                       "trained: raise --max-length.")


def score_answer_tokens_only() -> bool:
    """Have TRL's fused LM head project only the positions that have a label (the answers' tokens) on CPU too.

    TRL (1.16, trl.trainer.utils) computes the per-token log-probs in tiles without materialising the logits, and
    on Triton devices (CUDA, XPU) it first drops the positions whose label is -100: the prompt and the padding. On
    every other device it projects all of them through the 49k-128k-wide LM head and masks them afterwards, so that
    Neuron's compiler sees one shape per batch. Eager CPU compiles nothing, so there the dropped positions are pure
    waste: the LM head and its backward took ~30% of a CPU step (bundled model, batch 4), and scoring only the
    answers' tokens cut the step by ~15% (15.2 -> 12.6-13.9 s). The log-probs are the same numbers (summed in
    another order). TRL's `_use_triton` decides it; it is extended here for the CPU only, and only once. -> whether
    the installed TRL has that switch (tests/test_train.py fails if a TRL upgrade removes it)."""
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None:
        return False
    if not getattr(use_triton, "lab_cpu_compact", False):
        def compact_on_cpu(device) -> bool:
            return device.type == "cpu" or use_triton(device)

        compact_on_cpu.lab_cpu_compact, compact_on_cpu.trl_original = True, use_triton
        trl_utils._use_triton = compact_on_cpu
    return True


def build_trainer(model, tok, config: TrainConfig, out: Path, device: str, train: list[dict], held: list[dict],
                  progress: Progress):
    """The method's TRL trainer on `model`. A plain model gets a fresh LoRA (a reference method's reference = the
    adapter disabled); a PeftModel keeps its adapter trainable, and for a reference method TRL freezes a copy of it as
    the reference (reference-free methods just train it on)."""
    from peft import PeftModel
    from transformers import PrinterCallback

    trainer_cls, _ = METHODS[config.method].trainer()
    if device == "cpu":
        score_answer_tokens_only()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = to_dataset(train, config.method)  # KTO: two rows per pair
    eval_rows = to_dataset(held, config.method) if held else None
    counted = None
    if precomputes_ref(config, len(rows), world):  # the trainer computes them at init: a phase of its own, counted
        trainer_cls, counted = counting_reference_pass(trainer_cls, progress, len(rows) + len(eval_rows or []),
                                                       "answers" if config.method == "kto" else "pairs")
    trainer = trainer_cls(
        model, args=trainer_args(config, out, device, len(rows), bool(held)), train_dataset=rows,
        eval_dataset=eval_rows, processing_class=tok,
        peft_config=None if isinstance(model, PeftModel) else lora_config(config),
        callbacks=[metrics_callback(adapter_file(out, "metrics"), progress, world > 1)])
    if counted is not None:
        counted["on"] = False  # the pass is over: a later call (an evaluate() on a new set) is not this phase's
    trainer.remove_callback(PrinterCallback)  # with tqdm off it print()s every log dict onto the CLI's JSON stdout
    return trainer


REF_PASS = "computing the reference's log-probs:"


def counting_reference_pass(trainer_cls, progress: Progress, total: int, unit: str) -> tuple[type, dict]:
    """trainer_cls, reporting TRL's one pass over the rows for the reference's log-probs as a count
    ("computing the reference's log-probs: pairs 3/12 · about 20 s left") instead of seconds alone (minutes on a CPU).

    TRL 1.16's DPO and KTO trainers run that pass inside __init__ (`_precompute_ref_logps`, over the train set, then
    the eval set), calling the public `compute_ref_log_probs(model, batch)` once per batch and nowhere else; its
    first output holds one log-prob per row of the batch (DPO: per pair; KTO: per answer). The subclass counts those
    rows: TRL's loop itself is left as it is. -> (the subclass, its switch: {"on": bool}, to turn off after init).
    total: the train and eval rows (a pass TRL skips because its cache file exists just never counts up)."""
    state = {"on": True, "done": 0}
    desc = f"{REF_PASS} {unit}"

    class CountingReferencePass(trainer_cls):
        def compute_ref_log_probs(self, model, inputs):
            out = super().compute_ref_log_probs(model, inputs)
            if state["on"]:
                state["done"] = min(state["done"] + len(out[0]), total)
                progress.update(state["done"], total, desc)
            return out

    CountingReferencePass.__name__ = CountingReferencePass.__qualname__ = trainer_cls.__name__
    progress.update(0, total, desc)  # the phase starts before the first batch (TRL tokenizes the rows first)
    return CountingReferencePass, state


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or any(h in str(err).lower() for h in OOM_HINTS)


def oom_error(config: TrainConfig, device: str) -> LabError:
    where = "GPU" if device.startswith("cuda") else "CPU"
    fixes = [f"lower --batch-size (now {config.batch_size}) and raise --grad-accum to keep the effective batch",
             f"lower --max-length (now {config.max_length})"]
    if not config.gradient_checkpointing:
        fixes.append("turn --gradient-checkpointing on")
    return LabError(f"Out of {where} memory while training: " + "; ".join(fixes) + ", or use a smaller model. "
                    "Checkpoints already written are kept; no adapter was written.")


def run_trainer(trainer, config: TrainConfig, device: str, ckpt: Path | None) -> None:
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        if trainer.eval_dataset is not None and not stop_requested():
            trainer.evaluate()  # the final eval line: what the card reports
    except (RuntimeError, MemoryError) as e:
        if _is_oom(e):
            raise oom_error(config, device) from e
        raise


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "trl", "peft", "accelerate")}


# ---- the entry point other stages call -----------------------------------------------------------------------------
def resolve_init_adapter(run: Run, init_adapter: str | os.PathLike | None) -> str | None:
    """An adapter name of this run, or a folder holding adapter_config.json -> its path."""
    if not init_adapter:
        return None
    raw = str(init_adapter)
    for path in ((Path(raw).expanduser(),) + ((run.adapter_dir(raw),) if "/" not in raw else ())):
        if is_complete(path):
            return str(path.resolve())
    known = ", ".join(run.adapters()) or "none yet"
    raise LabError(f"--init-adapter {raw!r} is neither a complete adapter of run {run.name} ({known}) nor a folder "
                   "with adapter_config.json.")


def _barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def precheck(run: Run, pairs: str | os.PathLike, adapter_name: str, config: TrainConfig) -> dict:
    """The checks that need no model (settings, pairs file, adapter name), for the app to run before it starts a
    job. -> pair_stats of the pairs file. Raises LabError like train_adapter would."""
    replace(config, pairs=str(pairs), adapter=adapter_name).validate()
    out = run.adapter_dir(adapter_name)
    path = resolve_pairs(run, pairs)
    stats = pair_stats(path, load_pairs(path))
    refuse_finished(out)
    return stats


def train_adapter(run: Run, pairs: str | os.PathLike, adapter_name: str, config: TrainConfig,
                  base_model: str | None = None, init_adapter: str | os.PathLike | None = None,
                  progress: Progress | None = None, callbacks: list | None = None) -> Path:
    """Train one LoRA adapter with config.method (DPO by default) on a pairs file; returns
    `run.adapter_dir(adapter_name)`.

    pairs: "judge" | "pairrm" (the run's pairs-<source>.jsonl) or a path to a pairs .jsonl file.
    base_model: model spec (default: config.model, else the model that sampled the run).
    init_adapter: an adapter (name in this run, or folder) to continue from; it is also the frozen DPO reference,
      as self-rewarding rounds need. Its LoRA shape wins over config.lora_*.
    callbacks: extra transformers TrainerCallbacks (profiling, benchmarks).
    Raises LabError on bad input (nothing written), Stopped after saving a stopped training's adapter.
    Works unchanged under `accelerate launch` (every rank calls it; rank 0 writes the files).
    """
    config = replace(config, pairs=str(pairs), adapter=adapter_name, init_adapter=str(init_adapter or "")).validate()
    config = replace(config, loss_type=",".join(config.losses()))  # recorded as trained: "" -> the method's own
    out = run.adapter_dir(adapter_name)
    spec = base_model or models.run_model(run, config.model)
    path = resolve_pairs(run, pairs)
    records = label_pairs(run, load_pairs(path))  # spot-check verdicts, for methods that read labels (KTO)
    tok = models.load_tokenizer(spec)
    check_markup(records, tok, spec)
    check_lengths(records, tok, config.max_length)
    init = resolve_init_adapter(run, init_adapter)
    check_device(config, spec)  # a device, dtype, 4-bit or memory problem fails before any file is touched
    stats = pair_stats(path, records)
    identity = {**config.to_dict(), "model": spec, "pairs_sha256": stats["sha256"], "init_adapter": init}
    ckpt = plan_resume(out, identity, config.resume) if out.exists() else None
    _barrier()  # every rank has read the folder before rank 0 changes it
    lock = adapter_lock(out) if is_main_process() else _no_lock()
    with lock, efficiency.measure(run, "train", adapter_name):
        return _train_locked(run, out, records, stats, identity, ckpt, init, progress or Progress("train"),
                             callbacks or [])


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _train_locked(run: Run, out: Path, records: list[dict], stats: dict, identity: dict, ckpt: Path | None,
                  init: str | None, progress: Progress, callbacks: list) -> Path:
    config = TrainConfig(**{k: identity[k] for k in TrainConfig.__dataclass_fields__ if k != "init_adapter"},
                         init_adapter=init or "")
    spec = identity["model"]
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1  # ranks stop together at a step end (MetricsStream)
    if single:
        progress.check_stop()  # a stop asked for while an earlier stage ended: before a model loads (tens of seconds)
    progress.loading(f"model {spec}")
    model, tok, device = load_policy(spec, config, init)
    if single:
        progress.check_stop()  # asked while the model loaded: stop before the folder is touched, not a step later
    if init is None:  # a continued adapter keeps its own layers (TRL gets no LoraConfig then)
        check_target_modules(model, config, spec)
    train, held = split_pairs(records, config.eval_fraction, config.seed)
    state = {"status": "training", "settings": config.to_dict(), "method": config.method, "base_model": spec,
             "base_model_path": models.resolve(spec), "init_adapter": init,
             "pairs": {**stats, "n_train": len(train), "n_eval": len(held)}, "identity": identity,
             "global_step": 0, "max_steps": None, "final": {}, "warnings": [], "versions": versions(),
             "started": time.time(), "finished": None, "error": None}
    if is_main_process():
        reset_folder(out, ckpt)
        atomic_write_json(adapter_file(out, "state"), state)
    _barrier()
    try:  # from here on a failure is recorded in training.json (status "failed" and the message)
        with tracking_env(config, out):
            trainer = build_trainer(model, tok, config, out, device, train, held, progress)
        if config.load_in_4bit:
            precision.upcast_trainable(trainer.model, check_device(config)[1])
        for cb in callbacks:
            trainer.add_callback(cb)
        run_trainer(trainer, config, device, ckpt)
    except BaseException as e:
        if is_main_process() and not isinstance(e, KeyboardInterrupt):
            atomic_write_json(adapter_file(out, "state"), {**state, "status": "failed", "error": str(e)[:2000],
                                                              "finished": time.time()})
        raise
    return _finish(run, out, trainer, state, config)


def _finish(run: Run, out: Path, trainer, state: dict, config: TrainConfig) -> Path:
    """Publish the adapter (rank 0), record the stage, and raise Stopped if this was a stop."""
    stopped = stop_requested()
    trainer.accelerator.wait_for_everyone()
    if is_main_process():
        metrics = read_jsonl(adapter_file(out, "metrics"))
        efficiency.add(tokens_in=trained_tokens(metrics))
        state = {**state, "status": "stopped" if stopped else "done", "global_step": trainer.state.global_step,
                 "max_steps": trainer.state.max_steps, "final": final_metrics(metrics),
                 "warnings": diagnose(metrics, state["pairs"], config.beta, method=config.method),
                 "reference_precomputed": bool(getattr(trainer.args, "precompute_ref_log_probs", False)),
                 "finished": time.time()}
        publish(out, trainer.accelerator.unwrap_model(trainer.model), state,
                lambda staging: cards.model_card(out.name, out.name, run, staging, state))
        if not stopped:
            shutil.rmtree(adapter_file(out, "checkpoints"), ignore_errors=True)  # only a resume needs them
        run.record_stage("train", {"adapter": out.name, "pairs": state["pairs"]["path"], "base_model":
                                   state["base_model"], "init_adapter": state["init_adapter"], **config.to_dict()})
    trainer.accelerator.wait_for_everyone()
    if stopped:
        raise Stopped(f"Training stopped at step {trainer.state.global_step} of {trainer.state.max_steps}: the adapter "
                      f"trained so far is saved in {out}; run the same command again to resume.")
    return out


def trained_tokens(metrics: list[dict]) -> int:
    """Tokens the adapter was trained on: TRL's cumulative num_tokens on the last logged train line."""
    seen = [m["num_tokens"] for m in metrics if m.get("split") == "train" and isinstance(m.get("num_tokens"), (int,
                                                                                                           float))]
    return int(seen[-1]) if seen else 0


def run(run: Run, cfg: TrainConfig, progress: Progress | None = None) -> dict:
    """The train stage as the CLI runs it: cfg.pairs, cfg.adapter and cfg.init_adapter say what to train.
    -> a summary (status, steps, pair counts, final metrics, warnings)."""
    if not cfg.pairs or not cfg.adapter:
        raise LabError("Give --pairs (a pair source of the run, e.g. judge, or a pairs file) and --adapter (the name "
                       "of the adapter to write).")
    out = train_adapter(run, cfg.pairs, cfg.adapter, cfg, init_adapter=cfg.init_adapter or None, progress=progress)
    state = read_state(out)
    return {"adapter": str(out), "status": state["status"], "steps": state["global_step"],
            "pairs": {k: state["pairs"][k] for k in ("n_train", "n_eval")}, "final": state["final"],
            "warnings": state["warnings"]}
