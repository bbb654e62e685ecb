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
    python bench/judge.py --quick              # a smoke test: 20 calls at 100 ms, a 10-per-second limit, 20 calls

The last line is one JSON object: calls_per_s_plain, calls_per_s_lab, ratio_vs_plain, rl_429_limiter_on,
rl_429_limiter_off (429 answers provoked with the lab's limiter on and off), local_ratio_vs_plain (null without
--local), and the settings.
"""
from __future__ import annotations

import argparse
import json
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
KEY_ENV = "BENCH_JUDGE_KEY"  # a key for the stand-in server, named explicitly (GROQ_API_KEY may go to Groq only)


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
    cfg = JudgeConfig(**{"backend": "groq", "model": "bench", "base_url": fp.url, "api_key_env": KEY_ENV,
                         "plan": "full", "rpm": 0.0,
                         "concurrency": 16, "backoff_s": 0.2, "max_retries": 10, **kw})
    t0 = time.perf_counter()
    out = judge_run(run, cfg, Progress(quiet=True))
    return out, time.perf_counter() - t0


def throughput(root: Path, calls: int, latency_s: float = 0.3) -> dict:
    with FakeProvider(key=KEY, latency_s=latency_s, answer=answer) as fp:
        n, base_s = plain_sequential(fp, make_run(root, "plain", max(1, calls // 20)))
        out, lab_s = lab_run(fp, make_run(root, "lab", max(1, calls // 20)))
        assert out["calls_made"] == n, (out["calls_made"], n)
        print(f"throughput, {n} calls at {latency_s * 1000:.0f} ms latency: one at a time {n / base_s:.2f} calls/s "
              f"({base_s:.1f} s); lab judge (concurrency 16) {n / lab_s:.2f} calls/s ({lab_s:.1f} s); "
              f"ratio {base_s / lab_s:.1f}x")
    return {"calls": n, "calls_per_s_plain": round(n / base_s, 2), "calls_per_s_lab": round(n / lab_s, 2),
            "ratio_vs_plain": round(base_s / lab_s, 2)}


def rate_limit(root: Path, calls: int = 150, speedup: float = 10.0, per_minute: int = 60) -> dict:
    """The server allows per_minute requests per (60 / speedup) s; the lab is told the same limit on that clock."""
    window, found = 60.0 / speedup, {}
    for key, label, rpm in (("on", f"lab limiter on (--rpm {per_minute * speedup:g})", per_minute * speedup),
                            ("off", "limiter off (--rpm 0)", 0.0)):
        with FakeProvider(key=KEY, latency_s=0.05, answer=answer) as fp:
            fp.rate_limit = (per_minute, window)
            out, secs = lab_run(fp, make_run(root, f"rl-{key}", max(1, calls // 20)), rpm=rpm)
            print(f"rate limit {per_minute} per {window:g} s ({per_minute}/min, clock x{speedup:g}), "
                  f"{out['calls_made']} calls: {label}: {fp.statuses[429]} answers 429 provoked, {fp.calls} requests "
                  f"sent, {secs:.1f} s, {out['calls_made'] / secs * 60 / speedup:.1f} calls per (scaled) minute")
            found[f"rl_429_limiter_{key}"] = fp.statuses[429]
    return {**found, "rl_calls": out["calls_made"], "rl_per_minute": per_minute, "rl_clock_speedup": speedup}


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


def local(root: Path, calls: int, reasoning_tokens: int = 32, spec: str = "bundled") -> dict:
    from lab.judge_backends import LocalBackend

    run = make_run(root, "local", max(1, calls // 20 + 1))
    cands, _ = load_candidates(run)
    todo = plan_step("full", cands, lambda c: None)[0][:calls]
    prompts = [render_prompt(DEFAULT_TEMPLATE, c.instruction, *c.shown) for c in todo]
    backend = LocalBackend(spec, reasoning_tokens=reasoning_tokens, batch_size=8)
    backend.judge(prompts[:2])  # warm-up
    t0 = time.perf_counter()
    backend.judge(prompts)
    lab_s = time.perf_counter() - t0
    base_s = plain_local(backend.cm, prompts, reasoning_tokens)
    print(f"local judge ({spec}, {reasoning_tokens} reasoning tokens, {len(prompts)} calls, {backend.cm.device}): "
          f"plain per-call {len(prompts) / base_s:.2f} calls/s ({base_s:.1f} s); lab {len(prompts) / lab_s:.2f} "
          f"calls/s ({lab_s:.1f} s); ratio {base_s / lab_s:.1f}x")
    return {"local_calls": len(prompts), "local_model": spec,
            "local_calls_per_s_plain": round(len(prompts) / base_s, 3),
            "local_calls_per_s_lab": round(len(prompts) / lab_s, 3), "local_ratio_vs_plain": round(base_s / lab_s, 2)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="throughput calls (a multiple of 20)")
    ap.add_argument("--rl-calls", type=int, default=150, help="rate-limit calls (a multiple of 20 works best)")
    ap.add_argument("--local", type=int, default=0, help="also bench the local judge on this many calls")
    ap.add_argument("--local-model", default="bundled", help="the local judge's model spec")
    ap.add_argument("--only-local", action="store_true", help="skip the API benches")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 20 calls at 100 ms latency; the limit "
                    "scaled to 10 per second, 20 calls")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    os.environ[KEY_ENV] = KEY
    out: dict = {"quick": args.quick, "local_ratio_vs_plain": None}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_local:
            out.update(throughput(Path(tmp), 20, 0.1) if args.quick else throughput(Path(tmp), args.calls))
            out.update(rate_limit(Path(tmp), 20, 60.0, 10) if args.quick else rate_limit(Path(tmp), args.rl_calls))
        if args.local:
            out.update(local(Path(tmp), args.local, spec=args.local_model))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
