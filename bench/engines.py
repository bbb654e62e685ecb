"""Generation engines side by side: the lab's sampler and vLLM (lab.engine_vllm), same prompts, same settings.

vLLM runs in its own process (its own virtualenv: scripts/setup-vllm.sh), so its time is reported twice: the whole
call (start, engine load, generation, exit) and generation alone (as the worker measures it, after the load).
The lab's sampler is timed after a warm-up, with the model already loaded.

    python bench/engines.py                                  # bundled SmolLM2-135M, 12 x 5 x 128 tokens
    python bench/engines.py --compile                        # vLLM with torch.compile (its default off CPU)
    python bench/engines.py --quick                          # a smoke test: 2 x 2 x 8 tokens (vLLM still loads)

The last line is one JSON object: lab_tokens_per_s, vllm_tokens_per_s (generation alone), vllm_call_s, vllm_load_s,
ratio_vllm_vs_lab, vllm_version, vllm_error (null, or why vLLM could not run: the vLLM figures are then null),
and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import engine_vllm, models  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.generation import Decoding, generate  # noqa: E402
from lab.instructions import load_instructions  # noqa: E402


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--compile", action="store_true", help="vLLM enforce_eager=False (torch.compile; slower load)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2 x 2 x 8 tokens")
    return ap


def vllm_side(cm, prompts: list[str], k: int, dec: Decoding, compile_: bool) -> dict:
    """vLLM's figures, or {"vllm_error": why} where it is not set up or fails."""
    ok, why = engine_vllm.available()
    if not ok:
        return {"vllm_error": why}
    info: dict = {}
    t = time.perf_counter()
    try:
        engine_vllm.generate(cm.path, [cm.encode_prompt(p) for p in prompts], k, dec, cm.eos_ids, info=info,
                             engine_args={"enforce_eager": False} if compile_ else None)
    except LabError as err:
        return {"vllm_error": str(err)}
    return {"vllm_tokens": info["completion_tokens"], "vllm_generate_s": info["generate_s"],
            "vllm_call_s": round(time.perf_counter() - t, 1), "vllm_load_s": info["load_s"],
            "vllm_version": info["vllm_version"], "vllm_error": None}


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.n, args.k, args.max_new_tokens = 2, 2, 8
    cm = models.load(args.model)
    prompts = [i.prompt for i in load_instructions("bundled", args.n)]
    dec = Decoding(args.temperature, args.top_p, args.max_new_tokens, seed=0)
    generate(cm, prompts[:1], 1, Decoding(0.8, 0.95, 4))  # warm-up
    t = time.perf_counter()
    lab_out = generate(cm, prompts, args.k, dec)
    lab_s = time.perf_counter() - t
    lab_tokens = sum(c.completion_tokens for group in lab_out for c in group)
    lab_rate = lab_tokens / lab_s
    print(f"lab sampler: {lab_tokens:6d} tokens in {lab_s:7.2f} s = {lab_rate:8.1f} tokens/s")
    v = vllm_side(cm, prompts, args.k, dec, args.compile)
    vllm_rate = v["vllm_tokens"] / v["vllm_generate_s"] if v["vllm_error"] is None else None
    if vllm_rate is not None:
        print(f"vLLM       : {v['vllm_tokens']:6d} tokens in {v['vllm_generate_s']:7.2f} s = {vllm_rate:8.1f} "
              f"tokens/s (load {v['vllm_load_s']:.1f} s, whole call {v['vllm_call_s']:.1f} s)")
    else:
        print(f"vLLM       : not run: {v['vllm_error']}", file=sys.stderr)
    out = {"model": cm.spec, "n": args.n, "k": args.k, "max_new_tokens": args.max_new_tokens,
           "temperature": args.temperature, "top_p": args.top_p, "compile": args.compile, "quick": args.quick,
           "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "lab_tokens_per_s": round(lab_rate, 1), "vllm_tokens_per_s": round(vllm_rate, 1) if vllm_rate else None,
           "vllm_call_s": v.get("vllm_call_s"), "vllm_load_s": v.get("vllm_load_s"),
           "ratio_vllm_vs_lab": round(vllm_rate / lab_rate, 2) if vllm_rate else None,
           "vllm_version": v.get("vllm_version"), "vllm_error": v["vllm_error"]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
