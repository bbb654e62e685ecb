"""Sampling throughput: the lab's batched sampler against a plain loop, on the same instructions and settings.

Plain baseline: one `model.generate(..., do_sample=True, num_return_sequences=K)` call per instruction.
Lab: lab.sample.generate (prompts pre-filled once, many prompts per batch, finished rows dropped, cheap top-p).
Both count generated tokens (end-of-turn excluded) over wall time, in one process, one after the other.

    python bench/sample.py                          # bundled SmolLM2-135M on CPU
    python bench/sample.py --shape llama-1b         # a random Llama-3.2-1B-shaped model (for a CUDA machine)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lab import models  # noqa: E402
from lab.instructions import load_instructions  # noqa: E402
from lab.generation import Decoding, generate


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


def plain_loop(cm: models.ChatModel, prompts: list[str], k: int, dec: Decoding) -> int:
    tokens = 0
    for p in prompts:
        ids = torch.tensor([cm.encode_prompt(p)], device=cm.device)
        with torch.inference_mode():
            out = cm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=dec.temperature > 0,
                                    temperature=dec.temperature, top_p=dec.top_p, top_k=None,
                                    max_new_tokens=dec.max_new_tokens, num_return_sequences=k,
                                    eos_token_id=cm.eos_ids, pad_token_id=cm.tokenizer.pad_token_id)
        new = out[:, ids.shape[1]:]
        tokens += int((~torch.isin(new, torch.tensor(cm.eos_ids + [cm.tokenizer.pad_token_id], device=cm.device))).sum())
    return tokens


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--shape", choices=["llama-1b"], default=None, help="use a random model of this shape instead")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device, _ = models.pick_device(args.device)
    cm = llama_1b_shaped(device) if args.shape else models.load(args.model, device)
    prompts = [i.prompt for i in load_instructions("bundled", args.n)]
    dec = Decoding(args.temperature, args.top_p, args.max_new_tokens, seed=0)
    print(f"model={cm.spec} device={device} n={args.n} k={args.k} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature} top_p={args.top_p} batch_size={args.batch_size} threads={torch.get_num_threads()}")
    generate(cm, prompts[:1], 1, Decoding(0.8, 0.95, 4))  # warm-up: first-call allocations count for neither side
    plain_tokens, plain_s = timed(lambda: plain_loop(cm, prompts, args.k, dec))
    lab_out, lab_s = timed(lambda: generate(cm, prompts, args.k, dec, batch_size=args.batch_size))
    lab_tokens = sum(c.completion_tokens for group in lab_out for c in group)
    plain_rate, lab_rate = plain_tokens / plain_s, lab_tokens / lab_s
    print(f"plain loop : {plain_tokens:6d} tokens in {plain_s:7.2f} s = {plain_rate:8.1f} tokens/s")
    print(f"lab sampler: {lab_tokens:6d} tokens in {lab_s:7.2f} s = {lab_rate:8.1f} tokens/s")
    print(f"ratio      : {lab_rate / plain_rate:.2f}x tokens/s")


if __name__ == "__main__":
    main()
