"""PairRM ranking time per instruction: the lab's batched ranker against llm-blender's own `Blender.rank`.

Plain baseline: `Blender.rank(inputs, candidates, return_scores=True)` (llm-blender 0.0.2), which runs the K*(K-1)
ordered pairs as K*(K-1) sequential forward passes over a batch of instructions (its default: 8 per batch).
Lab: `lab.rank.compare_all`, every ordered pair of several instructions in one forward pass.
Same weights, same inputs, same process, alternating (after one warm-up call each), best of --repeats runs;
the scores of the two are checked to agree. On the wide model the lab's int8 mode (`--quantize int8`: dynamic int8
linear layers, query/key in bf16) runs in the same rotation, and its rankings are compared with fp32's.
The last line is one JSON object: ratio_wall_tiny, ratio_wall_wide (llm-blender time / lab time: >= 1.0 means
the lab is at least as fast), ratio_cpu_tiny, ratio_cpu_wide (the same in CPU time, steadier on a shared machine),
ratio_wall_int8_wide, ratio_cpu_int8_wide (lab fp32 / lab int8), spearman_int8 (int8 against fp32 over every
score), spearman_int8_within (the mean per instruction: its ranking), best_worst_same_int8 (the share of
instructions whose best and worst response, the preference pair, is the same), attention_top_prob_* (how peaked
the random model's attention is; see PAIRRM_SHAPE), and the settings.

    python bench/rank.py                  # CPU: the tiny random PairRM, then a PairRM-wide model cut to 2 layers
    python bench/rank.py --cuda           # GPU: a random model with PairRM's full shape (DeBERTa-v3-large,
                                          # 24 layers, 436 M parameters), 5 candidates of ~1,000 tokens
    python bench/rank.py --quick          # a smoke test: both CPU models, 2 / 1 instructions x 3 short responses
    python bench/rank.py --reward-only    # only the reward model against PairRM (below), a minute or two on CPU
Random weights, because the hub is out of reach; the time depends on shapes and lengths, not on the weights.

Reward model against PairRM (every CPU run, and --reward-only): wall time per instruction at K=5 (one instruction,
~100-word responses, one timed run after a short warm-up) of a reward model with Qwen3-0.6B's shape
(Skywork-Reward-V2-Qwen3-0.6B's backbone: Qwen3ForSequenceClassification, 28 layers, K passes through
lab.reward) and of PairRM's full shape (DeBERTa-v3-large, 24 layers, K*(K-1) ordered pairs through
lab.rank.compare_all), both random weights built from configs; each reads the responses as it would (PairRM cuts
them at ~412 tokens, the reward model reads them whole). Its figures: s_per_instr_reward, s_per_instr_pairrm_full,
ratio_wall_pairrm_vs_reward and ratio_cpu_pairrm_vs_reward (PairRM time / reward-model time: > 1 means the reward
model is faster), the parameter counts and the tokens each read. --quick uses 2-layer models of width 64.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lab import models, rank, reward  # noqa: E402
from lab.instructions import load_instructions  # noqa: E402
from lab.stats import spearman  # noqa: E402

PAIRRM_SHAPE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    initializer_range=0.05)
# The tiny model's random weights (std 0.2 at width 64) scaled to width 1024 by 1/sqrt(width): 0.05. At 0.2 a
# 1024-wide layer's attention is one-hot (mean top probability 0.95), so any rounding flips which token it reads and
# no approximation can agree with fp32; at 0.02 (DeBERTa's own init) it is uniform and every response scores the
# same. At 0.05 attention spreads like a trained model's (the bench prints it as attention_top_prob_wide).


QWEN3_06B_SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)  # Qwen3-0.6B's config.json
TINY_QWEN3 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)


def make_inputs(n: int, k: int, words: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n bundled instructions, each with k responses of about `words` words drawn from the instruction texts."""
    prompts = [i.prompt for i in load_instructions("bundled")]
    vocab = " ".join(prompts).split()
    rng = random.Random(seed)
    sources = [prompts[i % len(prompts)] for i in range(n)]
    cands = [[" ".join(rng.choices(vocab, k=words + rng.randint(-words // 5, words // 5))) for _ in range(k)]
             for _ in range(n)]
    return sources, cands


def timed(fn, device: str) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result). On a shared CPU the CPU time is the steadier figure:
    other people's load stretches wall time but not the work done."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def bench(name: str, folder: Path, sources, cands, device: str, dtype: str, batch_size: int, repeats: int,
          int8: bool = False) -> dict:
    """Seconds per instruction for llm-blender's rank and for lab.rank.compare_all (and its int8 mode), on the same
    checkpoint, alternating, best of `repeats`."""
    blender = rank.blender_module().Blender()
    blender.loadranker(str(folder), device=device, model_name=str(folder / "backbone"))  # fp16 on cuda, fp32 on cpu
    sides = {"lab": rank.load_ranker(str(folder), device=device, dtype=dtype)}
    if int8:
        sides["int8"] = rank.load_ranker(str(folder), device=device, dtype=dtype, quantize="int8")
    groups = list(zip(sources, cands))
    runs = {"base": lambda: blender.rank(sources, cands, return_scores=True, disable_tqdm=True),
            **{k: (lambda r=r: rank.compare_all(r, groups, batch_size)) for k, r in sides.items()}}
    blender.rank(sources[:1], cands[:1], return_scores=True, disable_tqdm=True)  # warm-up
    for r in sides.values():
        rank.compare_all(r, groups[:1], batch_size)
    best, out = {k: [float("inf")] * 2 for k in runs}, {}  # [wall, cpu]
    for _ in range(repeats):  # alternate, keep the best of each: a shared machine's load comes and goes
        for k, fn in runs.items():
            *t, out[k] = timed(fn, device)
            best[k] = [min(a, b) for a, b in zip(best[k], t)]
    scores = {k: np.array([rank.scores_and_ranks(m["logits"])[0] for m in out[k]]) for k in sides}
    ours = sides["lab"]
    attention = attention_top_prob(ours, groups[0])
    tokens = np.mean([ours.collator([{"source": s, "candidates": c}])["candidate_attention_mask"].sum(-1).float()
                      .mean().item() for s, c in groups])  # as the model sees them, after truncation
    del blender
    r = {"model": name, "params_M": round(sum(p.numel() for p in ours.model.parameters()) / 1e6, 1),
         "instructions": len(sources), "k": len(cands[0]), "cand_tokens": round(float(tokens)),
         "baseline_s_per_instr": best["base"][0] / len(sources), "lab_s_per_instr": best["lab"][0] / len(sources),
         "speedup": best["base"][0] / best["lab"][0], "cpu_speedup": best["base"][1] / best["lab"][1],
         "max_score_diff": float(np.abs(scores["lab"] - out["base"]).max()), "attention_top_prob": attention}
    if int8:
        fp, q = scores["lab"], scores["int8"]
        r.update(int8_s_per_instr=best["int8"][0] / len(sources), int8_speedup=best["lab"][0] / best["int8"][0],
                 int8_cpu_speedup=best["lab"][1] / best["int8"][1],
                 spearman_int8=spearman(fp.ravel().tolist(), q.ravel().tolist()),
                 spearman_int8_within=float(np.mean([spearman(a.tolist(), b.tolist()) for a, b in zip(fp, q)])),
                 best_worst_same_int8=float(np.mean([a.argmax() == b.argmax() and a.argmin() == b.argmin()
                                                     for a, b in zip(fp, q)])))
    return r


def attention_top_prob(ranker, group) -> float:
    """Mean over heads, layers and tokens of the largest attention probability, on the first ordered pair of one
    instruction: near 1 is one-hot attention, near 1/length uniform."""
    rows, _ = rank._pair_rows(ranker, *group)
    ids = torch.cat([rows[0][0], rows[0][2], rows[0][4]])[None].to(ranker.device)
    with torch.inference_mode():
        out = ranker.model.pretrained_model(input_ids=ids, output_attentions=True)
    return round(float(torch.stack([a.float().amax(-1).mean() for a in out.attentions]).mean()), 3)


def random_reward_model(shape: dict, seed: int = 0) -> reward.RewardModel:
    """A reward model with random weights of `shape` (Qwen3ForSequenceClassification, one label), held in memory,
    with the bundled tokenizer (ChatML, like Qwen3's template; a smaller vocabulary, which costs nothing in time)."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tok = models.load_tokenizer("tiny-random")
    config = Qwen3Config(**{"vocab_size": len(tok), **shape}, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(config).eval()
    return reward.RewardModel("random Qwen3-0.6B shape", "", model, tok, "cpu", reward.max_length_of(tok, config))


def bench_reward(k: int, quick: bool, root: Path) -> dict:
    """Seconds per instruction (one instruction, K responses, one timed run each after a warm-up) of a random
    reward model of Qwen3-0.6B's shape and of a random PairRM of DeBERTa-v3-large's shape, on CPU."""
    sources, cands = make_inputs(1, k, 20 if quick else 100)
    groups = list(zip(sources, cands))
    warm = [(sources[0], ["A short warm-up answer.", "Another one."])]
    rm = random_reward_model(TINY_QWEN3 if quick else QWEN3_06B_SHAPE)
    reward.rank_fields(rm, warm)
    t_reward = timed(lambda: reward.rank_fields(rm, groups), "cpu")
    reward_tokens = float(np.mean([len(reward.encode(rm, s, c)[0]) for s, cs in groups for c in cs]))
    reward_params = sum(p.numel() for p in rm.model.parameters()) / 1e6
    del rm
    pr = rank.load_ranker(str(build(None if quick else PAIRRM_SHAPE, root)), device="cpu", dtype="float32")
    rank.compare_all(pr, warm, 20)
    t_pairrm = timed(lambda: rank.compare_all(pr, groups, 20), "cpu")
    pair_tokens = float(pr.collator([{"source": sources[0], "candidates": cands[0]}])["candidate_attention_mask"]
                        .sum(-1).float().mean())
    return {"k": k, "reward_shape": "2-layer Qwen3, width 64" if quick else "Qwen3-0.6B",
            "pairrm_shape": "tiny random PairRM" if quick else "DeBERTa-v3-large (24 layers)",
            "s_per_instr_reward": round(t_reward[0], 3), "s_per_instr_pairrm_full": round(t_pairrm[0], 3),
            "ratio_wall_pairrm_vs_reward": round(t_pairrm[0] / t_reward[0], 3),
            "ratio_cpu_pairrm_vs_reward": round(t_pairrm[1] / t_reward[1], 3),
            "reward_params_M": round(reward_params, 1),
            "pairrm_params_M": round(sum(p.numel() for p in pr.model.parameters()) / 1e6, 1),
            "reward_tokens_per_response": round(reward_tokens), "pairrm_tokens_per_response": round(pair_tokens)}


def build(backbone: dict | None, root: Path) -> Path:
    folder = root / ("pairrm-shaped" if backbone else "tiny")
    folder.mkdir(parents=True, exist_ok=True)
    rank.build_random_pairrm(folder, backbone=backbone)
    return folder


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="full PairRM shape on the GPU")
    ap.add_argument("--n", type=int, default=None, help="instructions (default: 8 CPU tiny, 8 CPU wide, 32 cuda)")
    ap.add_argument("--k", type=int, default=5, help="responses per instruction")
    ap.add_argument("--batch-size", type=int, default=None, help="ordered pairs per forward pass of the lab ranker")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each (alternating); the best one counts")
    ap.add_argument("--quick", action="store_true", help="a smoke test: few, short responses, one timed run")
    ap.add_argument("--reward-only", action="store_true", help="only the reward model against PairRM (CPU)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.k, args.repeats = 3, 1
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"device {'cuda: ' + torch.cuda.get_device_name() if args.cuda else 'cpu'}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cuda:  # ~1,000-token candidates: PairRM gives them 412 + half of the unused source budget
            runs = [("wide", "PairRM-shaped (24 layers)", PAIRRM_SHAPE, args.n or (2 if args.quick else 32),
                     30 if args.quick else 700, "cuda", "float16", args.batch_size or 40, False)]
        elif args.reward_only:
            runs = []
        else:
            runs = [("tiny", "tiny random PairRM", None, args.n or (2 if args.quick else 8), 30 if args.quick else 120,
                     "cpu", "float32", args.batch_size or 40, False),
                    ("wide", "PairRM-wide, 2 of 24 layers", {**PAIRRM_SHAPE, "num_hidden_layers": 2},
                     args.n or (1 if args.quick else 8), 20 if args.quick else 100, "cpu", "float32",
                     args.batch_size or 20, True)]
        summary = {"device": "cuda" if args.cuda else "cpu", "threads": torch.get_num_threads(),
                   "load_avg_1m": round(os.getloadavg()[0], 2), "repeats": args.repeats, "quick": args.quick}
        for key, name, shape, n, words, device, dtype, bs, int8 in runs:
            sources, cands = make_inputs(n, args.k, words)
            r = bench(name, build(shape, Path(tmp)), sources, cands, device, dtype, bs, args.repeats, int8)
            print(f"{r['model']}: {r['params_M']} M params, {r['instructions']} instructions x {r['k']} responses "
                  f"of ~{r['cand_tokens']} tokens (as ranked) | llm-blender rank {r['baseline_s_per_instr']:.3f} "
                  f"s/instruction | lab {r['lab_s_per_instr']:.3f} s/instruction | {r['speedup']:.2f}x wall, "
                  f"{r['cpu_speedup']:.2f}x CPU time | max score difference {r['max_score_diff']:.2e}")
            summary.update({f"ratio_wall_{key}": round(r["speedup"], 3), f"ratio_cpu_{key}": round(r["cpu_speedup"], 3),
                            f"s_per_instr_blender_{key}": round(r["baseline_s_per_instr"], 4),
                            f"s_per_instr_lab_{key}": round(r["lab_s_per_instr"], 4),
                            f"max_score_diff_{key}": r["max_score_diff"],
                            f"attention_top_prob_{key}": r["attention_top_prob"]})
            if int8:
                print(f"  int8: {r['int8_s_per_instr']:.3f} s/instruction | {r['int8_speedup']:.2f}x wall, "
                      f"{r['int8_cpu_speedup']:.2f}x CPU time against fp32 | Spearman {r['spearman_int8']:.3f} "
                      f"over all scores, {r['spearman_int8_within']:.3f} per instruction | same best and worst "
                      f"response in {r['best_worst_same_int8']:.0%} of instructions | attention top probability "
                      f"{r['attention_top_prob']:.2f}")
                summary.update(ratio_wall_int8_wide=round(r["int8_speedup"], 3),
                               ratio_cpu_int8_wide=round(r["int8_cpu_speedup"], 3),
                               spearman_int8=round(r["spearman_int8"], 4),
                               spearman_int8_within=round(r["spearman_int8_within"], 4),
                               best_worst_same_int8=round(r["best_worst_same_int8"], 3),
                               bf16_query_key=rank.native_bf16())
        if not args.cuda:
            r = bench_reward(args.k, args.quick, Path(tmp))
            print(f"reward model ({r['reward_shape']}, {r['reward_params_M']} M params) {r['s_per_instr_reward']:.2f} "
                  f"s/instruction vs PairRM ({r['pairrm_shape']}, {r['pairrm_params_M']} M params) "
                  f"{r['s_per_instr_pairrm_full']:.2f} s/instruction at K={r['k']}: PairRM / reward "
                  f"{r['ratio_wall_pairrm_vs_reward']:.2f}x wall, {r['ratio_cpu_pairrm_vs_reward']:.2f}x CPU time "
                  f"(tokens per response read: {r['reward_tokens_per_response']} vs "
                  f"{r['pairrm_tokens_per_response']})")
            summary.update(r)
        summary["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(summary))
        return summary


if __name__ == "__main__":
    main()
