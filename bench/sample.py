"""Sampling throughput: the lab's batched sampler against two plain `generate` baselines, same prompts, same settings.

Plain loop: one `model.generate(..., do_sample=True, num_return_sequences=K)` call per instruction.
Plain batched: the same `generate`, all instructions of a batch in one call (left-padded; --batch-size // K
instructions per call, the lab's sequences per batch), num_return_sequences=K, the same decoding.
Lab: lab.generation.generate (prompts pre-filled once, many prompts per batch, finished rows dropped, cheap top-p).
All three count generated tokens (end-of-turn and padding excluded) over wall time, in one process, one after the
other, after a warm-up.

    python bench/sample.py                          # bundled SmolLM2-135M on CPU
    python bench/sample.py --shape llama-1b         # a random Llama-3.2-1B-shaped model (for a CUDA machine)
    python bench/sample.py --quick                  # a smoke test (tiny-random, seconds)

The last line is one JSON object: loop_tok_s, hf_batched_tok_s, lab_tok_s, ratio_vs_loop, ratio_vs_hf_batched
(lab / baseline tokens per second; the goal on CPU is >= 2.0 for both; the loop's are null with --no-loop), and
the settings. --model takes a checkpoint folder too (bench/gpu.sh passes its random Llama-3.2-1B-shaped one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lab import models  # noqa: E402
from lab.engine_lab import left_pad  # noqa: E402
from lab.generation import Decoding, generate  # noqa: E402
from lab.instructions import load_instructions  # noqa: E402


def llama_1b_shaped(device: str) -> models.ChatModel:
    """Random weights with Llama-3.2-1B's shapes (128k vocabulary) and the bundled tokenizer (no hub needed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer("bundled")
    tok.padding_side = "left"
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    return models.ChatModel("llama-1b-shaped", "random", model, tok, device, [tok.eos_token_id])


def plain_generate(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding) -> int:
    """One plain `generate` call for these prompts (left-padded), K samples each. -> tokens generated."""
    ids, mask = left_pad([cm.encode_prompt(p) for p in prompts], cm.tokenizer.pad_token_id, cm.device)
    with torch.inference_mode():
        out = cm.model.generate(ids, attention_mask=mask, do_sample=dec.temperature > 0,
                                temperature=dec.temperature, top_p=dec.top_p, top_k=None,
                                max_new_tokens=dec.max_new_tokens, num_return_sequences=k,
                                eos_token_id=cm.eos_ids, pad_token_id=cm.tokenizer.pad_token_id)
    new = out[:, ids.shape[1]:]
    stop = torch.tensor(cm.eos_ids + [cm.tokenizer.pad_token_id], device=cm.device)
    return int((~torch.isin(new, stop)).sum())


def plain_loop(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding) -> int:
    """The per-instruction loop: one generate call per prompt."""
    return sum(plain_generate(cm, [p], k, dec) for p in prompts)


def plain_batched(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding, batch_size: int) -> int:
    """Plain generate over many prompts per call: batch_size // k prompts (batch_size sequences) at a time."""
    per = max(1, batch_size // k)
    return sum(plain_generate(cm, prompts[i:i + per], k, dec) for i in range(0, len(prompts), per))


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - t


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model spec (default: bundled; tiny-random with --quick)")
    ap.add_argument("--shape", choices=["llama-1b"], default=None, help="use a random model of this shape instead")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per batch (the lab's and plain batched)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-loop", action="store_true", help="skip the per-prompt loop (slow on a GPU at these sizes)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2 x 2 x 8 tokens")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.n, args.k, args.max_new_tokens = 2, 2, 8
    spec = args.model or ("tiny-random" if args.quick else "bundled")
    device, _ = models.pick_device(args.device)
    cm = llama_1b_shaped(device) if args.shape else models.load(spec, device)
    prompts = [i.prompt for i in load_instructions("bundled", args.n)]
    dec = Decoding(args.temperature, args.top_p, args.max_new_tokens, seed=0)
    print(f"model={cm.spec} device={device} n={args.n} k={args.k} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature} top_p={args.top_p} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()}")
    generate(cm, prompts[:1], 1, Decoding(0.8, 0.95, 4))  # warm-ups: first-call allocations count for none
    plain_generate(cm, prompts[:2], 1, Decoding(0.8, 0.95, 4))
    sides = {**({} if args.no_loop else {"loop": lambda: plain_loop(cm, prompts, args.k, dec)}),
             "hf_batched": lambda: plain_batched(cm, prompts, args.k, dec, args.batch_size),
             "lab": lambda: sum(c.completion_tokens for group in generate(cm, prompts, args.k, dec,
                                                                         batch_size=args.batch_size) for c in group)}
    rate = {}
    for name, fn in sides.items():
        tokens, secs = timed(fn)
        rate[name] = tokens / secs
        print(f"{name:>10}: {tokens:6d} tokens in {secs:7.2f} s = {rate[name]:8.1f} tokens/s")
    out = {"model": cm.spec, "device": device, "n": args.n, "k": args.k, "max_new_tokens": args.max_new_tokens,
           "temperature": args.temperature, "top_p": args.top_p, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "loop_tok_s": None, **{f"{k}_tok_s": round(v, 1) for k, v in rate.items()},
           "ratio_vs_loop": round(rate["lab"] / rate["loop"], 3) if "loop" in rate else None,
           "ratio_vs_hf_batched": round(rate["lab"] / rate["hf_batched"], 3), "quick": args.quick}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
