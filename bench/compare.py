"""Comparison cost: memory of base + 2 adapters switched on one model, and batched vs one-at-a-time completions.

Memory. Each scenario runs in a fresh child process and reports its peak memory (peak RSS on CPU, peak allocated
CUDA memory on a GPU): the plain baseline loads the model once and generates the held-out completions; the lab loads
the same model once, puts two LoRA adapters on it (r=16 on every linear layer, the training default) with
lab.adapters.adapters_on and generates the same completions for base + both adapters. For scale, a third child does
what the lab avoids: three separate model copies. Target: lab / baseline <= 1.2.

Speed. In one process, base + 2 adapters answer the same instructions with lab.compare's path (all instructions of a
model in one batch) and one instruction at a time (batch size 1, same decoding). Completions per second, and the ratio.

    python bench/compare.py [--model bundled] [--n 16] [--max-new-tokens 48]
    python bench/compare.py --quick             # a smoke test: tiny-random, 2 instructions x 8 tokens

The last line is one JSON object: peak_mb per scenario, ratio_memory_lab (lab / one model; target <= 1.2),
ratio_memory_three_copies, completions_per_s_batched, completions_per_s_one_at_a_time, ratio_batched, and the
settings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_adapters(spec: str, folder: Path, count: int = 2) -> dict[str, Path]:
    """LoRA adapters shaped like trained ones (r=16, all linear layers), with non-zero random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lab import models

    out = {}
    for i in range(count):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(models.resolve(spec))
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        out[f"adapter{i}"] = folder / f"adapter{i}"
        peft.save_pretrained(out[f"adapter{i}"])
    return out


def prompts(n: int) -> list[str]:
    from lab.instructions import load_instructions

    items = load_instructions("heldout") + load_instructions("bundled")
    return [i.prompt for i in items[:n]]


def peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(scenario: str, spec: str, adapters: dict[str, str], n: int, tokens: int) -> dict:
    """One scenario in this (fresh) process; returns its peak memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from lab import models
    from lab.adapters import adapters_on
    from lab.generation import Decoding, generate

    dec, texts = Decoding(0.7, 0.9, tokens, 0), prompts(n)
    cm = models.load(spec)
    if scenario == "one-model":
        generate(cm, texts, 1, dec, n)
    elif scenario == "lab":
        with adapters_on(cm, {k: Path(v) for k, v in adapters.items()}) as select:
            for name in (None, *adapters):
                with select(name) as m:
                    generate(m, texts, 1, dec, n)
    else:  # three copies: what switching avoids
        from peft import PeftModel

        copies = [cm] + [models.ChatModel(**{**cm.__dict__, "model": PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(cm.path).to(cm.device).eval(), p)}) for p in adapters.values()]
        for m in copies:
            generate(m, texts, 1, dec, n)
    del torch
    return {"scenario": scenario, "peak_mb": peak_memory_mb(cm.device), "device": cm.device}


def run_child(scenario: str, args, adapters: dict[str, Path]) -> dict:
    cmd = [sys.executable, __file__, "--child", scenario, "--model", args.model, "--n", str(args.n),
           "--max-new-tokens", str(args.max_new_tokens),
           "--adapters", json.dumps({k: str(v) for k, v in adapters.items()})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(spec: str, adapters: dict[str, Path], n: int, tokens: int) -> dict:
    """Completions/s of base + adapters: whole held-out set per batch vs one instruction at a time."""
    from lab import models
    from lab.adapters import adapters_on
    from lab.generation import Decoding, generate

    cm, dec, texts = models.load(spec), Decoding(0.7, 0.9, tokens, 0), prompts(n)
    out = {}
    with adapters_on(cm, adapters) as select:
        for label, batch in (("batched", n), ("one_at_a_time", 1)):
            t0 = time.perf_counter()
            for name in (None, *adapters):
                with select(name) as m:
                    for i in range(0, n, batch):
                        generate(m, texts[i:i + batch], 1, dec, batch)
            out[label] = 3 * n / (time.perf_counter() - t0)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: bundled; tiny-random with --quick)")
    ap.add_argument("--n", type=int, default=16, help="held-out instructions")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2 instructions x 8 tokens")
    ap.add_argument("--child", default="")
    ap.add_argument("--adapters", default="{}")
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    args = parser().parse_args(argv)
    args.model = args.model or ("tiny-random" if args.quick else "bundled")
    if args.quick:
        args.n, args.max_new_tokens = 2, 8
    if args.child:
        print(json.dumps(child(args.child, args.model, json.loads(args.adapters), args.n, args.max_new_tokens)))
        return None
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(args.model, Path(tmp))
        mem = {s: run_child(s, args, adapters) for s in ("one-model", "lab", "three-copies")}
        rate = speed(args.model, adapters, args.n, args.max_new_tokens)
    base = mem["one-model"]["peak_mb"]
    print(f"model={args.model} device={mem['lab']['device']} instructions={args.n} "
          f"max_new_tokens={args.max_new_tokens} adapters=2 (LoRA r=16, all linear layers)")
    for s, m in mem.items():
        print(f"peak memory {s:>13}: {m['peak_mb']:8.1f} MB  ({m['peak_mb'] / base:.2f}x one model)")
    print(f"completions/s  batched: {rate['batched']:.2f}   one at a time: {rate['one_at_a_time']:.2f}   "
          f"speed-up: {rate['batched'] / rate['one_at_a_time']:.2f}x")
    print(f"memory target lab <= 1.2x one model: {'met' if mem['lab']['peak_mb'] / base <= 1.2 else 'MISSED'}")
    out = {"model": args.model, "device": mem["lab"]["device"], "n": args.n, "max_new_tokens": args.max_new_tokens,
           "quick": args.quick, **{f"peak_mb_{s.replace('-', '_')}": round(m["peak_mb"], 1) for s, m in mem.items()},
           "ratio_memory_lab": round(mem["lab"]["peak_mb"] / base, 3),
           "ratio_memory_three_copies": round(mem["three-copies"]["peak_mb"] / base, 3),
           "completions_per_s_batched": round(rate["batched"], 3),
           "completions_per_s_one_at_a_time": round(rate["one_at_a_time"], 3),
           "ratio_batched": round(rate["batched"] / rate["one_at_a_time"], 3)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
