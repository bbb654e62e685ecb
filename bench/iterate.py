"""Self-scoring speed: the lab's batched self-scoring against the loop over answers a user would write.

Both sides score the same answers (written first by the lab's sampler, untimed) R times with the paper's 5-point
prompt (lab.score.SCORE_PROMPT), same model, same decoding (T=0.7, top-p 0.95, --judge-tokens), in one process,
one after the other, after a warm-up each:
  loop: for each answer, `model.generate(num_return_sequences=R)` on its judge prompt; then, for each judgment that
        wrote no "Score: N", one forward pass over prompt + judgment + "Score: " for the digit probabilities (the
        lab's own fallback, done the plain way);
  lab:  lab.score.local_scores with --batch-size sequences per batch: judgments batched through the generation
        engine, each prompt pre-filled once for its R judgments, the digit probabilities read on that cache; on CPU
        the decode reads each prompt's keys once for its rows (lab.shared_attention). It runs a second time with a
        copy of the prompt per row (LAB_SHARED_ATTENTION=0's path): ratio_shared_vs_copied.
Tokens are counted the same way on both sides (the judgment texts re-tokenized), over wall time (CPU time too).

--iterate also times the README's `python -m lab iterate --run demo --rounds 2` end to end, in a temp runs root,
after the README's sample step (`--n 20 --k 5 --max-new-tokens 128`, untimed); --quick shrinks everything.

    python bench/iterate.py                    # bundled SmolLM2-135M: 8 instructions x 4 answers, R=3
    python bench/iterate.py --iterate          # and the README's iterate command (2 cores: tens of minutes)
    python bench/iterate.py --quick [--iterate] [--model tiny-random]     # a smoke test (< 1 minute)

The last line is one JSON object: score_tok_s_lab, score_tok_s_loop, ratio_vs_loop (lab / loop tokens per
second), s_per_answer_lab, s_per_answer_loop, ratio_s_per_answer (loop / lab), score_tok_s_lab_copied,
ratio_shared_vs_copied (the lab with shared prompt keys / with a copy per row), iterate_wall_s (null without
--iterate), iterate_error (null, or why it failed), and the settings.
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

from lab import models, shared_attention  # noqa: E402
from lab import score as scoring  # noqa: E402
from lab.engine_lab import LabSession  # noqa: E402
from lab.generation import Decoding, auto_batch, generate  # noqa: E402
from lab.instructions import load_instructions  # noqa: E402

README_SAMPLE = ["--n", "20", "--k", "5", "--max-new-tokens", "128"]
QUICK_SAMPLE = ["--n", "2", "--k", "2", "--max-new-tokens", "8"]
QUICK_ITERATE = ["--samples", "2", "--evaluations", "1", "--max-new-tokens", "8",
                 "--judge-tokens", "8", "--eval-n", "1", "--max-steps", "1", "--train-batch-size", "1"]


def answers(cm, n: int, k: int, tokens: int) -> tuple[list[str], list[str]]:
    """(instructions, answers): k answers to each of n bundled instructions by the lab's sampler (iterate's T=0.7,
    top-p 0.9), flattened; instruction i of the first list goes with answer i of the second."""
    prompts = [i.prompt for i in load_instructions("bundled", n)]
    out = generate(cm, prompts, k, Decoding(0.7, 0.9, tokens, 0), batch_size=64)
    return [p for p, group in zip(prompts, out) for _ in group], [c.text for group in out for c in group]


def loop_scores(cm, prompts: list[str], r: int, dec: Decoding) -> list[str]:
    """The plain baseline: one generate call per answer (R sequences), then one forward pass per judgment without a
    score. -> the judgments' texts."""
    import torch

    texts = []
    for p in prompts:
        ids = torch.tensor([cm.encode_prompt(p)], device=cm.device)
        with torch.inference_mode():
            out = cm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=dec.temperature, top_p=dec.top_p, top_k=None,
                                    max_new_tokens=dec.max_new_tokens, num_return_sequences=r,
                                    eos_token_id=cm.eos_ids, pad_token_id=cm.tokenizer.pad_token_id)
        judged = [t.strip() for t in cm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]
        for t in judged:
            if scoring.parse_score(t) is None:
                full = cm.render([{"role": "user", "content": p}]) + scoring.judgment_context(t)
                ctx, digits = scoring.digit_contexts(cm.tokenizer, [full])
                with torch.inference_mode():
                    cm.model(input_ids=torch.tensor([ctx[0]], device=cm.device)).logits[0, -1, list(digits)]
        texts.extend(judged)
    return texts


def timed(fn):
    """(result, wall s, CPU s of this process)."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - t, time.process_time() - cpu


def tokens(cm, texts: list[str]) -> int:
    return sum(len(ids) for ids in cm.tokenizer(texts, add_special_tokens=False)["input_ids"])


def score_bench(args) -> dict:
    cm = models.load(args.model)
    instr, texts = answers(cm, args.n, args.k, args.answer_tokens)
    prompts = [scoring.score_prompt(i, t) for i, t in zip(instr, texts)]
    cfg = scoring.ScoreConfig(evaluations=args.r, judge_tokens=args.judge_tokens, judge_temperature=0.7,
                              batch_size=auto_batch(args.batch_size, str(cm.device), "auto", cm.path))
    dec = Decoding(0.7, 0.95, args.judge_tokens, 0)
    loop_scores(cm, prompts[:1], 1, Decoding(0.7, 0.95, 2, 0))  # warm-ups: first-call allocations count for neither
    scoring.local_scores(LabSession(cm), prompts[:1], 1, cfg, seed=1)
    loop_texts, loop_s, loop_cpu = timed(lambda: loop_scores(cm, prompts, args.r, dec))
    lab_out, lab_s, lab_cpu = timed(lambda: scoring.local_scores(LabSession(cm), prompts, args.r, cfg, seed=0))
    lab_texts = [e["raw"] for row in lab_out for e in row]
    loop_tok, lab_tok = tokens(cm, loop_texts), tokens(cm, lab_texts)
    shared_attention.ENABLED = False  # the lab's own scoring with a copy of the prompt per row, for comparison
    copied_out, copied_s, _ = timed(lambda: scoring.local_scores(LabSession(cm), prompts, args.r, cfg, seed=0))
    shared_attention.ENABLED = True
    copied_tok = tokens(cm, [e["raw"] for row in copied_out for e in row])
    return {"model": cm.spec, "device": cm.device, "answers": len(prompts), "evaluations": args.r,
            "answer_tokens": args.answer_tokens, "judge_tokens": args.judge_tokens,
            "batch_size": cfg.batch_size,
            "score_tok_s_lab_copied": round(copied_tok / copied_s, 2),
            "ratio_shared_vs_copied": round((lab_tok / lab_s) / (copied_tok / copied_s), 3),
            "prompt_tokens_mean": round(sum(len(cm.encode_prompt(p)) for p in prompts) / len(prompts)),
            "judgment_tokens_lab": lab_tok, "judgment_tokens_loop": loop_tok,
            "unscored_share_lab": round(sum(e["method"] != "parsed" for row in lab_out for e in row)
                                        / max(len(lab_texts), 1), 3),
            "score_tok_s_lab": round(lab_tok / lab_s, 2), "score_tok_s_loop": round(loop_tok / loop_s, 2),
            "ratio_vs_loop": round((lab_tok / lab_s) / (loop_tok / loop_s), 3),
            "ratio_cpu_vs_loop": round((lab_tok / lab_cpu) / (loop_tok / loop_cpu), 3),
            "s_per_answer_lab": round(lab_s / len(prompts), 3), "s_per_answer_loop": round(loop_s / len(prompts), 3),
            "ratio_s_per_answer": round(loop_s / lab_s, 3)}


def lab_cmd(*argv: str, env: dict, timeout: float) -> None:
    """`python -m lab ARGV` as a user runs it; a failure raises with the end of its stderr."""
    proc = subprocess.run([sys.executable, "-m", "lab", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"`python -m lab {' '.join(argv)}` exited {proc.returncode}: {proc.stderr[-1500:]}")


def iterate_bench(model: str, quick: bool, timeout: float) -> dict:
    """Wall seconds of the README's iterate command (after its sample step, untimed) in a temp runs root."""
    with tempfile.TemporaryDirectory(prefix="bench-iterate-") as tmp:
        env = {**os.environ, "LAB_RUNS_DIR": tmp, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        lab_cmd("sample", "--run", "demo", "--model", model, "--instructions", "bundled",
                *(QUICK_SAMPLE if quick else README_SAMPLE), env=env, timeout=timeout)
        argv = ["iterate", "--run", "demo", "--rounds", "1" if quick else "2", *(QUICK_ITERATE if quick else [])]
        t = time.perf_counter()
        lab_cmd(*argv, env=env, timeout=timeout)
        return {"iterate_wall_s": round(time.perf_counter() - t, 1), "iterate_cmd": "python -m lab " + " ".join(argv)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled", help="model spec (bundled, tiny-random, a folder, a hub id)")
    ap.add_argument("--n", type=int, default=8, help="instructions")
    ap.add_argument("--k", type=int, default=4, help="answers per instruction (iterate's N)")
    ap.add_argument("--r", type=int, default=3, help="judgments per answer (iterate's R)")
    ap.add_argument("--answer-tokens", type=int, default=256, help="longest answer (iterate's --max-new-tokens)")
    ap.add_argument("--judge-tokens", type=int, default=160, help="longest judgment (iterate's default)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="the lab's sequences per batch (iterate's default 0: auto, 96 on CPU)")
    ap.add_argument("--iterate", action="store_true", help="also time the README's iterate command end to end")
    ap.add_argument("--iterate-timeout", type=float, default=3 * 3600, help="seconds before each command is stopped")
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, under a minute")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.n, args.k, args.r, args.answer_tokens, args.judge_tokens = 2, 2, 2, 16, 12
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    out = score_bench(args)
    print(f"scoring {out['answers']} answers x {out['evaluations']} ({out['model']}, {out['device']}): loop "
          f"{out['score_tok_s_loop']} tok/s ({out['s_per_answer_loop']} s/answer) | lab {out['score_tok_s_lab']} "
          f"tok/s ({out['s_per_answer_lab']} s/answer) | {out['ratio_vs_loop']}x tokens/s")
    out.update(iterate_wall_s=None, iterate_cmd=None, iterate_error=None)
    if args.iterate:
        try:
            out.update(iterate_bench(args.model, args.quick, args.iterate_timeout))
            print(f"{out['iterate_cmd']}: {out['iterate_wall_s']} s")
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            out["iterate_error"] = str(err)[-2000:]
            print(f"iterate failed: {out['iterate_error']}", file=sys.stderr)
    out.update(quick=args.quick, threads=torch.get_num_threads(), load_avg_1m_end=round(os.getloadavg()[0], 2))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
