"""Judge throughput and rate-limit safety, against the local chat-completions server (tests/fakeprovider.py).

1. Throughput: the same 200 judge calls (10 instructions x 5 responses, plan 'full') with 300 ms latency per call.
   Baseline: one call at a time with the plain groq SDK client (no lab code). Lab: lab.judge.judge_run with
   --concurrency 16 and no rpm limit. Figure: calls/s of each, and their ratio.
2. Rate limit: the server allows 60 requests per minute (sliding window) and answers 429 + Retry-After beyond that.
   To keep the bench short the clock is sped up 10x on both sides: the server allows 60 requests per 6 s and the
   client is told --rpm 600 (the same limit, on the same clock). 150 calls at --concurrency 16: the 429s the lab's
   limiter provokes (the goal: 0), against the same run with the limiter off (--rpm 0), which still finishes because
   429s are retried after Retry-After.

3. --local: the local judge (bundled SmolLM2-135M, default prompt, 32 reasoning tokens) on the same calls, against
   a plain per-call baseline: `model.generate` for the reasoning, then a second forward pass over the whole text for
   the label probabilities (what a straightforward implementation does). Lab: prompts batched, each pre-filled once,
   reasoning stopped at the model's closing quote, labels read on the same KV cache. (Part of the gain is that stop:
   SmolLM2-135M closes its reasoning after a few tokens, while plain generate runs on to the token limit.)

    python bench/judge.py                      # ~90 s
    python bench/judge.py --calls 100          # a quicker throughput check (calls: a multiple of 20)
    python bench/judge.py --local 8            # also the local judge on 8 calls (CPU: minutes)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.judge import JudgeConfig  # noqa: E402
from lab.judge import DEFAULT_TEMPLATE, judge_run, load_candidates, plan_step, render_prompt  # noqa: E402
from lab.progress import Progress  # noqa: E402
from lab.store import Run  # noqa: E402
from tests.fakeprovider import FakeProvider, first_shown, json_verdict  # noqa: E402

KEY = "bench-key"


def make_run(root: Path, name: str, instructions: int, k: int = 5) -> Run:
    run = Run(root / name)  # a folder this bench builds under its own temp root, not a name a user typed
    run.append("samples", [{"instruction_id": f"i{i}", "sample_index": j, "prompt": f"Question {i}?",
                            "text": f"Answer {i}.{j}: " + "detail " * (5 * j) + f"Q{j}Q", "model": "bench",
                            "model_path": "-", "decoding": {}, "prompt_tokens": 5, "completion_tokens": 20,
                            "finish_reason": "stop", "duplicate_of": None}
                           for i in range(instructions) for j in range(k)])
    return run


def answer(req: dict) -> str:
    marks = [f"Q{j}Q" for j in range(5)]
    shown = [m for m in marks if m in req["messages"][-1]["content"]]
    return json_verdict("A" if first_shown(req, *marks) == max(shown) else "B", "more detail")


def plain_sequential(fp: FakeProvider, run: Run) -> tuple[int, float]:
    """The baseline: every call of the plan, one after the other, with a plain SDK client."""
    import groq

    client = groq.Groq(api_key=KEY, base_url=fp.url)
    cands, _ = load_candidates(run)
    calls, _, _ = plan_step("full", cands, lambda c: None)
    t0 = time.perf_counter()
    for c in calls:
        client.chat.completions.create(model="bench", temperature=0, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": render_prompt(DEFAULT_TEMPLATE,
                                                                                          c.instruction, *c.shown)}])
    return len(calls), time.perf_counter() - t0


def lab_run(fp: FakeProvider, run: Run, **kw) -> tuple[dict, float]:
    cfg = JudgeConfig(**{"backend": "groq", "model": "bench", "base_url": fp.url, "plan": "full", "rpm": 0.0,
                         "concurrency": 16, "backoff_s": 0.2, "max_retries": 10, **kw})
    t0 = time.perf_counter()
    out = judge_run(run, cfg, Progress(quiet=True))
    return out, time.perf_counter() - t0


def throughput(root: Path, calls: int) -> None:
    with FakeProvider(key=KEY, latency_s=0.3, answer=answer) as fp:
        n, base_s = plain_sequential(fp, make_run(root, "plain", calls // 20))
        out, lab_s = lab_run(fp, make_run(root, "lab", calls // 20))
        assert out["calls_made"] == n, (out["calls_made"], n)
        print(f"throughput, {n} calls at 300 ms latency: one at a time {n / base_s:.2f} calls/s ({base_s:.1f} s); "
              f"lab judge (concurrency 16) {n / lab_s:.2f} calls/s ({lab_s:.1f} s); ratio {base_s / lab_s:.1f}x")


def rate_limit(root: Path, calls: int = 150, speedup: float = 10.0) -> None:
    window = 60.0 / speedup
    for label, rpm in (("lab limiter on (--rpm 600 = 60/min x10)", 60 * speedup), ("limiter off (--rpm 0)", 0.0)):
        with FakeProvider(key=KEY, latency_s=0.05, answer=answer) as fp:
            fp.rate_limit = (60, window)
            out, secs = lab_run(fp, make_run(root, f"rl-{int(rpm)}", calls // 20), rpm=rpm)
            print(f"rate limit 60 per {window:g} s (60/min, clock x{speedup:g}), {out['calls_made']} calls: {label}: "
                  f"{fp.statuses[429]} answers 429 provoked, {fp.calls} requests sent, {secs:.1f} s, "
                  f"{out['calls_made'] / secs * 60 / speedup:.1f} calls per (scaled) minute")


def plain_local(cm, prompts: list[str], reasoning_tokens: int) -> float:
    """The baseline local judge: one call at a time, generate, then a fresh forward pass for the labels."""
    import torch

    labels = [cm.tokenizer.encode(x, add_special_tokens=False)[0] for x in ("A", "B", "tie")]
    t0 = time.perf_counter()
    for p in prompts:
        head = cm.render([{"role": "user", "content": p}]) + '{"reasoning": "'
        ids = torch.tensor([cm.tokenizer(head, add_special_tokens=False)["input_ids"]], device=cm.device)
        with torch.inference_mode():
            out = cm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=reasoning_tokens, eos_token_id=cm.eos_ids,
                                    pad_token_id=cm.tokenizer.pad_token_id)
            text = cm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split('"')[0]
            full = cm.tokenizer(head + text + '", "verdict": "', add_special_tokens=False, return_tensors="pt")
            cm.model(**full.to(cm.device)).logits[0, -1, labels].softmax(-1)
    return time.perf_counter() - t0


def local(root: Path, calls: int, reasoning_tokens: int = 32) -> None:
    from lab.judge_backends import LocalBackend

    run = make_run(root, "local", max(1, calls // 20 + 1))
    cands, _ = load_candidates(run)
    todo = plan_step("full", cands, lambda c: None)[0][:calls]
    prompts = [render_prompt(DEFAULT_TEMPLATE, c.instruction, *c.shown) for c in todo]
    backend = LocalBackend("bundled", reasoning_tokens=reasoning_tokens, batch_size=8)
    backend.judge(prompts[:2])  # warm-up
    t0 = time.perf_counter()
    backend.judge(prompts)
    lab_s = time.perf_counter() - t0
    base_s = plain_local(backend.cm, prompts, reasoning_tokens)
    print(f"local judge (bundled, {reasoning_tokens} reasoning tokens, {len(prompts)} calls, {backend.cm.device}): "
          f"plain per-call {len(prompts) / base_s:.2f} calls/s ({base_s:.1f} s); lab {len(prompts) / lab_s:.2f} "
          f"calls/s ({lab_s:.1f} s); ratio {base_s / lab_s:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="throughput calls (a multiple of 20)")
    ap.add_argument("--rl-calls", type=int, default=150, help="rate-limit calls (a multiple of 20 works best)")
    ap.add_argument("--local", type=int, default=0, help="also bench the local judge on this many calls")
    ap.add_argument("--only-local", action="store_true", help="skip the API benches")
    args = ap.parse_args()
    os.environ["GROQ_API_KEY"] = KEY
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_local:
            throughput(Path(tmp), args.calls)
            rate_limit(Path(tmp), args.rl_calls)
        if args.local:
            local(Path(tmp), args.local)


if __name__ == "__main__":
    main()
