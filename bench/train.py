"""Benchmark: the lab's DPO training (lab.train.train_adapter) against a plain TRL script with identical settings.

    python bench/train.py                      # CPU: the bundled SmolLM2-135M, short sequences
    python bench/train.py --mode cuda          # GPU: a Llama-3.2-1B-shaped model (random weights), ~420 tokens/seq,
                                               # batch 8, LoRA r=16 on all linear layers
    python bench/train.py --mode cuda --no-gradient-checkpointing / --precompute-ref
    python bench/train.py --quick              # a smoke test: tiny-random, 3 steps, one run per side

Each side runs in its own child process (same pairs, same model folder, same settings) so imports, caches and peak
memory do not leak between them; the order alternates over --repeats and the median is reported. Seconds per step are
the gaps between consecutive ends of optimizer steps after --warmup steps (the same callback on both sides; CPU
seconds of the process too, which a busy shared machine distorts far less than wall time). Peak
memory is torch.cuda.max_memory_allocated on a GPU, the child's peak RSS on CPU. Prints one JSON line per side and
run, and last one JSON object: the medians per side and the ratios lab / plain (goal: within 5% on both).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the model answers each question with care and detail so that a reader can follow every step of the "
         "reasoning without prior knowledge of the topic at hand").split()


def llama_1b_shaped(folder: Path) -> str:
    """Llama-3.2-1B's shapes (16 layers, 2048 wide, GQA 32/8, 128k vocab, tied embeddings), random weights, with the
    bundled tokenizer (no hub here). Compute and memory match the real model; the text it writes does not."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lab import models

    if (folder / "config.json").exists():
        return str(folder)
    tok = models.load_tokenizer("bundled")
    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def text_of(n_words: int, offset: int) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def write_pairs(path: Path, n: int, prompt_words: int, answer_words: int) -> None:
    """n pairs; the chosen and rejected answers differ in their first words only, so lengths match across sides."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            answer = text_of(answer_words, i)
            row = {"prompt": [{"role": "user", "content": f"Question {i}: " + text_of(prompt_words, 3 * i)}],
                   "chosen": [{"role": "assistant", "content": "Certainly. " + answer}],
                   "rejected": [{"role": "assistant", "content": "Maybe. " + answer}],
                   "meta": {"instruction_id": f"b{i}"}}
            f.write(json.dumps(row) + "\n")


def settings(args) -> dict:
    return dict(max_steps=args.steps, batch_size=args.batch_size, grad_accum=1, lr=5e-5, beta=0.1, lora_r=16,
                lora_alpha=32, max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing,
                precompute_ref=args.precompute_ref, eval_fraction=0.0, save_steps=10 ** 6, logging_steps=1, seed=0)


# ---- the two sides (each in a child process) -----------------------------------------------------------------------
def clock():
    """A TrainerCallback noting (wall s, this process's CPU s) at the end of every optimizer step; the CPU time is
    what a shared machine cannot steal, so its ratio stays meaningful when other work competes for the cores."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        marks: list[tuple[float, float]] = []

        def on_step_end(self, args, state, control, **kw):
            self.marks.append((time.perf_counter(), time.process_time()))

    return Clock()


def side_lab(args, model_path: str, pairs: Path, work: Path, timer) -> None:
    from lab.train import TrainConfig
    from lab.store import Run
    from lab.train import train_adapter

    os.environ["LAB_RUNS_DIR"] = str(work)
    train_adapter(Run.open("bench"), str(pairs), "lab", TrainConfig(model=model_path, **settings(args)),
                  callbacks=[timer])


def side_trl(args, model_path: str, pairs: Path, work: Path, timer) -> None:
    """What a user would write from TRL's docs: load, LoraConfig, DPOConfig, DPOTrainer.train()."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    s = settings(args)
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.pad_token = "<|endoftext|>"  # what lab.models picks for this tokenizer: a pad that is not end-of-turn
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if cuda else torch.float32)
    data = load_dataset("json", data_files=str(pairs), split="train").remove_columns("meta")
    config = DPOConfig(output_dir=str(work / "trl"), max_steps=s["max_steps"], learning_rate=s["lr"],
                       lr_scheduler_type="cosine", warmup_steps=0.1, beta=s["beta"],
                       per_device_train_batch_size=s["batch_size"], max_length=s["max_length"], seed=0, data_seed=0,
                       gradient_checkpointing=s["gradient_checkpointing"],
                       precompute_ref_log_probs=s["precompute_ref"], bf16=cuda, use_cpu=not cuda, logging_steps=1,
                       save_strategy="no", report_to=[], disable_tqdm=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    DPOTrainer(model, args=config, train_dataset=data, processing_class=tok, peft_config=lora,
               callbacks=[timer]).train()


def worker(args) -> None:
    import torch

    timer = clock()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:  # the adapter and checkpoints: not kept
        (side_lab if args.worker == "lab" else side_trl)(args, args.model_path, Path(args.pairs), Path(work), timer)
    marks = timer.marks[args.warmup:]
    wall, cpu = ([b[i] - a[i] for a, b in zip(marks, marks[1:])] for i in (0, 1))
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print("RESULT " + json.dumps({"side": args.worker, "s_per_step": statistics.median(wall),
                                  "cpu_s_per_step": statistics.median(cpu), "peak_gib": peak / 2 ** 30,
                                  "steps_timed": len(wall)}))


# ---- the driver ----------------------------------------------------------------------------------------------------
def run_side(args, side: str, model_path: str, pairs: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model-path", model_path, "--pairs", str(pairs), *args.argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per side (default: 12 cpu, 30 cuda)")
    p.add_argument("--warmup", type=int, default=2, help="first step gaps left out of the timing")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, order alternating; the median is kept")
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 cpu, 8 cuda")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: off on cpu (small model), on for cuda (TRL's default)")
    p.add_argument("--precompute-ref", action="store_true")
    p.add_argument("--cpu-model", default=None,
                   help="model spec for CPU mode (bundled, tiny-random, a folder; default bundled, tiny-random with "
                        "--quick)")
    p.add_argument("--model-folder", default=None, help="cuda mode: this checkpoint instead of a random "
                   "Llama-3.2-1B-shaped one (built in the lab cache)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 3 steps, one run per side")
    p.add_argument("--worker", choices=("lab", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv  # the children get the same flags
    import torch

    if args.quick:
        args.steps, args.warmup, args.repeats = args.steps or 3, 1, 1
    args.cpu_model = args.cpu_model or ("tiny-random" if args.quick else "bundled")
    cuda = args.mode == "cuda" or (args.mode == "auto" and torch.cuda.is_available())
    args.steps = args.steps or (30 if cuda else 12)
    args.batch_size = args.batch_size or (8 if cuda else 2)
    args.gradient_checkpointing = cuda if args.gradient_checkpointing is None else args.gradient_checkpointing
    args.max_length = 512 if cuda else 160
    if args.worker:
        return worker(args)
    return drive(args, cuda)


def drive(args, cuda: bool) -> dict:
    from lab import models

    cache = models.cache_dir()
    if cuda:
        model_path = args.model_folder or llama_1b_shaped(cache / "bench-llama-1b-shaped")
    else:
        model_path = models.resolve(args.cpu_model)
    # ~420 tokens per sequence on cuda (prompt ~100 + answer ~320), ~120 on cpu. With --precompute-ref the steps
    # pass over the pairs twice: the lab precomputes only where training passes over its pairs more than once
    passes = 2 if args.precompute_ref else 1
    results: dict[str, list[dict]] = {"lab": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as scratch:
        pairs = Path(scratch) / "pairs.jsonl"
        write_pairs(pairs, max(1, args.steps * args.batch_size // passes), *((70, 250) if cuda else (20, 60)))
        for r in range(args.repeats):
            for side in (("lab", "trl") if r % 2 == 0 else ("trl", "lab")):
                res = run_side(args, side, model_path, pairs)
                print(json.dumps({**res, "repeat": r}), flush=True)
                results[side].append(res)
    med = {side: {k: statistics.median(x[k] for x in rs) for k in ("s_per_step", "cpu_s_per_step", "peak_gib")}
           for side, rs in results.items()}
    out = {"device": torch_device(cuda), "model": (args.model_folder or "llama-1b-shaped") if cuda else args.cpu_model,
           "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
           "gradient_checkpointing": args.gradient_checkpointing, "precompute_ref": args.precompute_ref,
           "repeats": args.repeats, "quick": args.quick, "lab": med["lab"], "plain_trl": med["trl"],
           "ratio_s_per_step": med["lab"]["s_per_step"] / med["trl"]["s_per_step"],
           "ratio_cpu_s_per_step": med["lab"]["cpu_s_per_step"] / med["trl"]["cpu_s_per_step"],
           "ratio_peak_memory": med["lab"]["peak_gib"] / med["trl"]["peak_gib"]}
    print(json.dumps(out))
    return out


def torch_device(cuda: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
