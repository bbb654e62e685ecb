"""Self-rewarding DPO (Yuan et al., 2024, "Self-Rewarding Language Models"): the model answers, scores its own
answers, and is trained on its best answer against its worst, round after round.

Round k (1, 2, ...) lives in runs/<run>/iterations/<k>/ (a nested lab.store.Run). Its policy M(k-1) is the base with
the adapter of round k-1 switched on (round 1: the plain base, or --start-adapter):

  1. samples.jsonl      N answers per instruction from M(k-1) (T=0.7, top-p 0.9 as in the paper), lab.sample's
                        format plus "policy": the adapter folder that wrote them (null: the base)
  2. scores.jsonl       every answer scored R times with the paper's additive 5-point prompt (SCORE_PROMPT), by
                        M(k-1) itself or by an API model (--judge groq|openai)
  3. pairs-self.jsonl   per instruction, the answer with the highest mean score (chosen) against the lowest
                        (rejected), in lab.pairs' TRL format; instructions whose best and worst tie are dropped
  4. adapters/round-<k>/  DPO (lab.train.train_adapter) starting from M(k-1)'s adapter, which is also the frozen
                        reference, so round k improves on round k-1 rather than on the base
  5. compare.jsonl      base, M(k-1) and M(k) on held-out instructions (lab.compare's format), scored by one fixed
                        evaluator for every round (the base model, or the API judge), for win rates that can be
                        compared across rounds

scores.jsonl, one line per evaluation:

    {"set": "train" | "eval", "instruction_id": str,
     "sample_index": int | null,        # train: which answer of samples.jsonl
     "model": str | null,               # eval: "base" or "round-<k>" (rows of compare.jsonl)
     "eval_index": int,                 # 0..R-1
     "score": float | null,             # 0-5; null when the judgment could not be read
     "method": "parsed" | "probabilities" | "invalid",
                                        # parsed: "Score: <points>" found in the text; probabilities: a local judge
                                        # that wrote no score is asked to continue "Score: " and the expected value
                                        # over the digits 0-5 is taken (a 135M model rarely ends with the format)
     "probs": [p0..p5] | null, "raw": str, "judge": str, "prompt_hash": str}

iterate.jsonl (run root), one line per finished round: its lineage and statistics:

    {"round": k, "policy": adapter path | null, "reference": adapter path | null, "adapter": path,
     "judge": str, "instructions": int, "samples": int, "evaluations": int, "unscored": int,
     "pairs_kept": int, "dropped_ties": int, "dropped_unscored": int,
     "score_hist": {"0".."5": count of evaluations, rounded}, "score_mean": float,
     "chars_mean": float, "chosen_chars_mean": float, "rejected_chars_mean": float,
     "eval": {"instructions": int, "chars_mean": {model: float},
              "win_rate_vs_base": lab.compare.win_rate dict | null, "win_rate_vs_previous": ... | null},
     "train": {"global_step", "final": {metric: value}}, "time": str}
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from pathlib import Path
from typing import Callable

from lab.errors import LabError
from lab.progress import Progress
from lab.store import Run, once, write_jsonl

SCORE_PROMPT = """Review the user's question and the corresponding response using the additive 5-point scoring \
system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it \
is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not \
completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, \
regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in \
blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the \
user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for \
improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, \
without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and \
insightful answer.

User: {instruction}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the \
response in alignment with this additive scoring model, we'll systematically attribute points based on the \
outlined criteria."""
PROMPT_HASH = hashlib.sha256(SCORE_PROMPT.encode()).hexdigest()[:16]
SCORE_RE = re.compile(r"score\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*5)?", re.IGNORECASE)
ADAPTER = "round-{}"


# ---- the judgment: prompt, parser, local probabilities ------------------------------------------------------------
def score_prompt(instruction: str, response: str) -> str:
    return SCORE_PROMPT.format(instruction=instruction, response=response)


def parse_score(text: str) -> float | None:
    """The points of the LAST "Score: <points>" in a judgment (0-5), or None where there is none or it is out of range.
    Accepts the variants judges write: "Score: 4", "**Score:** 4", "Score: 3.5", "score: 4/5"."""
    found = SCORE_RE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 0 <= value <= 5 else None


def digit_tokens(tok, context: str) -> tuple[list[int], list[int]]:
    """(ids of `context`, the id of each digit 0-5 as the next token). Found by tokenizing context + digit, so it
    works whether a tokenizer glues the digit to the space before it or not."""
    runs = [tok(context + str(d), add_special_tokens=False)["input_ids"] for d in range(6)]
    common = 0
    while all(len(r) > common + 1 and r[common] == runs[0][common] for r in runs):
        common += 1
    ids = [r[common] for r in runs]
    if len(set(ids)) != 6:
        raise LabError("This judge model's tokenizer does not give the digits 0-5 their own tokens after 'Score: ': "
                       "use --score-mode parse or another judge.")
    return runs[0][:common], ids


def forced_score_probs(cm, heads: list[str], batch_size: int) -> list[list[float]]:
    """For each rendered prompt + judgment text, P(digit) over 0-5 for the token after "Score: ". [n] -> [n, 6]."""
    import torch

    out: list[list[float]] = []
    for i in range(0, len(heads), batch_size):
        rows, ids = [], None
        for h in heads[i:i + batch_size]:
            ctx, ids = digit_tokens(cm.tokenizer, h.rstrip() + "\nScore: ")
            rows.append(ctx)
        from lab.sample import _left_pad

        input_ids, mask = _left_pad(rows, cm.tokenizer.pad_token_id, cm.device)
        with torch.inference_mode():
            logits = cm.model(input_ids=input_ids, attention_mask=mask,
                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1).logits[:, -1]
        out.extend(logits[:, ids].float().softmax(-1).tolist())
    return out


def strip_partial_score(text: str) -> str:
    """Cut a judgment before a last 'Score' that was started but not finished (max tokens ran out)."""
    cut = text.lower().rfind("score")
    return text[:cut].rstrip() if cut >= 0 and parse_score(text[cut:]) is None else text


def local_scores(cm, prompts: list[str], evaluations: int, cfg, seed: int, progress: Progress | None = None
                 ) -> list[list[dict]]:
    """R judgments of each judge prompt by a local chat model (cm: any ChatModel, adapters switched as wanted).
    Returns, per prompt, R dicts {"score", "method", "probs", "raw"}."""
    from lab.sample import Decoding, generate

    dec = Decoding(cfg.judge_temperature, 1.0 if cfg.judge_temperature == 0 else 0.95, cfg.judge_tokens, seed)
    texts = [[c.text for c in comps] for comps in generate(cm, prompts, evaluations, dec, cfg.batch_size, progress)]
    out = [[{"score": parse_score(t), "method": "parsed", "probs": None, "raw": t} for t in row] for row in texts]
    todo = [(i, j) for i, row in enumerate(out) for j, e in enumerate(row) if e["score"] is None]
    if todo and cfg.score_mode == "auto":
        heads = [cm.render([{"role": "user", "content": prompts[i]}]) + strip_partial_score(out[i][j]["raw"])
                 for i, j in todo]
        for (i, j), probs in zip(todo, forced_score_probs(cm, heads, cfg.batch_size)):
            out[i][j].update(score=sum(d * p for d, p in enumerate(probs)), method="probabilities", probs=probs)
    for row in out:
        for e in row:
            e["method"] = e["method"] if e["score"] is not None else "invalid"
    return out


def api_scores(backend, prompts: list[str], evaluations: int, progress: Progress | None = None) -> list[list[dict]]:
    """R judgments of each prompt by an API model (lab.judge_backends.ApiBackend), one request each."""
    out = []
    for n, p in enumerate(prompts):
        row = []
        for _ in range(evaluations):
            reply = backend.complete(p)
            s = parse_score(reply.text)
            row.append({"score": s, "method": "parsed" if s is not None else "invalid", "probs": None,
                        "raw": reply.text, "usage": {"prompt_tokens": reply.prompt_tokens,
                                                     "completion_tokens": reply.completion_tokens}})
        out.append(row)
        if progress:
            progress.update(n + 1, len(prompts))
            progress.check_stop()
    return out


def api_backend(cfg, api_key: str | None = None):
    """The API judge, or None for the model's own judgment. The key is passed in memory (the app) or read from the
    environment; it never reaches a file."""
    if cfg.judge == "self":
        return None
    from lab.judge_backends import DEFAULT_MODELS, ApiBackend
    from lab.ratelimit import RateLimiter

    return ApiBackend(cfg.judge, cfg.judge_model or DEFAULT_MODELS[cfg.judge], RateLimiter(cfg.rpm), api_key=api_key,
                      temperature=cfg.judge_temperature, max_tokens=cfg.judge_tokens, json_mode=False)


def judge_name(cfg) -> str:
    if cfg.judge == "self":
        return "self"
    from lab.judge_backends import DEFAULT_MODELS

    return f"{cfg.judge}:{cfg.judge_model or DEFAULT_MODELS[cfg.judge]}"


# ---- pairs from scores -------------------------------------------------------------------------------------------
def mean_scores(scores: list[dict]) -> dict[tuple[str, int], float]:
    """{(instruction_id, sample_index): mean of its readable scores} over the train set."""
    acc: dict[tuple[str, int], list[float]] = {}
    for s in scores:
        if s["set"] == "train" and s["score"] is not None:
            acc.setdefault((s["instruction_id"], s["sample_index"]), []).append(s["score"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def build_pairs(samples: list[dict], scores: list[dict], k: int) -> tuple[list[dict], dict]:
    """Highest vs lowest mean score per instruction; ties (equal scores or identical texts) and instructions with
    fewer than 2 scored answers are dropped.
    Returns (TRL pairs, {"pairs_kept", "dropped_ties", "dropped_unscored"})."""
    means = mean_scores(scores)
    by_inst: dict[str, list[dict]] = {}
    for s in samples:
        by_inst.setdefault(s["instruction_id"], []).append(s)
    pairs, stats = [], {"pairs_kept": 0, "dropped_ties": 0, "dropped_unscored": 0}
    for iid, group in by_inst.items():
        scored = sorted((s for s in group if (iid, s["sample_index"]) in means),
                        key=lambda s: (-means[(iid, s["sample_index"])], s["sample_index"]))
        if len(scored) < 2:
            stats["dropped_unscored"] += 1
            continue
        best, worst = scored[0], scored[-1]
        if means[(iid, best["sample_index"])] == means[(iid, worst["sample_index"])] or best["text"] == worst["text"]:
            stats["dropped_ties"] += 1
            continue
        pairs.append(to_pair(best, worst, means, k))
        stats["pairs_kept"] += 1
    return pairs, stats


def to_pair(best: dict, worst: dict, means: dict, k: int) -> dict:
    """A pair in lab.pairs' format; source "self", strength = the gap between the two mean scores."""
    iid = best["instruction_id"]
    hi, lo = means[(iid, best["sample_index"])], means[(iid, worst["sample_index"])]
    return {"prompt": [{"role": "user", "content": best["prompt"]}],
            "chosen": [{"role": "assistant", "content": best["text"]}],
            "rejected": [{"role": "assistant", "content": worst["text"]}],
            "meta": {"instruction_id": iid, "chosen_index": best["sample_index"],
                     "rejected_index": worst["sample_index"], "source": "self", "strategy": "best-vs-worst",
                     "by": "self-reward", "strength": hi - lo, "score_chosen": hi, "score_rejected": lo, "round": k}}


def score_stats(samples: list[dict], scores: list[dict], pairs: list[dict]) -> dict:
    train = [s for s in scores if s["set"] == "train"]
    valid = [s["score"] for s in train if s["score"] is not None]
    hist = {str(d): sum(round(v) == d for v in valid) for d in range(6)}
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"samples": len(samples), "evaluations": len(train), "unscored": len(train) - len(valid),
            "score_hist": hist, "score_mean": mean(valid), "chars_mean": mean([len(s["text"]) for s in samples]),
            "chosen_chars_mean": mean([len(p["chosen"][0]["content"]) for p in pairs]),
            "rejected_chars_mean": mean([len(p["rejected"][0]["content"]) for p in pairs])}


# ---- one round -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Round:
    """What a round works with. `select(name)` switches adapters on the one loaded base (lab.compare.adapters_on)."""

    k: int
    run: Run                  # the round's folder, iterations/<k>/
    spec: str                 # base model spec
    policy: Path | None       # adapter of M(k-1); None = the plain base
    select: object
    judge: object             # ApiBackend, or None for the policy's own judgment
    cfg: object
    progress: Progress
    previous: Run | None = None  # round k-1's folder (its evaluation is reused)
    started: Callable[[], None] = lambda: None  # called before each new record: iterate_run records its settings

    @property
    def policy_name(self) -> str | None:
        return ADAPTER.format(self.k - 1) if self.policy else None


def sample_round(r: Round, items: list[dict]) -> list[dict]:
    """N answers per instruction from the policy, appended per chunk of instructions (a stop loses one chunk)."""
    from lab.sample import Decoding, generate

    have = {s["instruction_id"] for s in r.run.read("samples")}
    todo = [it for it in items if it["id"] not in have]
    dec = Decoding(r.cfg.temperature, r.cfg.top_p, r.cfg.max_new_tokens, r.cfg.seed + r.k)
    step = max(1, r.cfg.batch_size // r.cfg.samples)
    for n in range(0, len(todo), step):
        r.progress.check_stop()
        r.progress.update(len(items) - len(todo) + n, len(items), f"round {r.k}: sampling")
        chunk = todo[n:n + step]
        with r.select(r.policy_name) as cm:
            comps = generate(cm, [it["prompt"] for it in chunk], r.cfg.samples, dec, r.cfg.batch_size)
        r.started()
        r.run.append("samples", [sample_record(it, j, c, cm, r, dec) for it, cs in zip(chunk, comps)
                                 for j, c in enumerate(cs)])
    return [s for s in r.run.read("samples") if s["instruction_id"] in {it["id"] for it in items}]


def sample_record(item: dict, j: int, c, cm, r: Round, dec) -> dict:
    return {"instruction_id": item["id"], "sample_index": j, "prompt": item["prompt"], "text": c.text,
            "model": r.spec, "model_path": cm.path, "decoding": dataclasses.asdict(dec),
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason, "duplicate_of": None, "policy": str(r.policy) if r.policy else None}


def score_texts(r: Round, which: str | None, rows: list[dict], make_key, seed: int) -> None:
    """Score (instruction, response) rows R times and append them to the round's scores.jsonl, per chunk.
    rows: {"instruction_id", "prompt", "text", "sample_index" | "model", "set"}; make_key(row) -> resume key.
    which: the adapter the local judge runs with (None: the base)."""
    have = {score_key(s) for s in r.run.read("scores")}
    todo = [row for row in rows if make_key(row) not in have]
    for n in range(0, len(todo), r.cfg.batch_size):
        r.progress.check_stop()
        r.progress.update(len(rows) - len(todo) + n, len(rows), f"round {r.k}: scoring ({todo[0]['set']})")
        chunk = todo[n:n + r.cfg.batch_size]
        prompts = [score_prompt(row["prompt"], row["text"]) for row in chunk]
        if r.judge is None:
            with r.select(which) as cm:
                evals = local_scores(cm, prompts, r.cfg.evaluations, r.cfg, seed)
        else:
            evals = api_scores(r.judge, prompts, r.cfg.evaluations)
        train = todo[0]["set"] == "train"
        r.started()
        r.run.append("scores", [{"set": row["set"], "instruction_id": row["instruction_id"],
                                 "sample_index": row["sample_index"] if train else None,
                                 "model": None if train else row["model"],
                                 "eval_index": e, **ev, "judge": judge_name(r.cfg), "prompt_hash": PROMPT_HASH}
                                for row, evs in zip(chunk, evals) for e, ev in enumerate(evs)])


def score_key(s: dict) -> tuple:
    return (s["set"], s["instruction_id"], s.get("sample_index"), s.get("model"))


def train_round(r: Round, n_pairs: int) -> Path:
    """DPO on the round's pairs, continuing from (and referenced to) the policy's adapter."""
    from lab.train import train_adapter

    out = r.run.adapter_dir(ADAPTER.format(r.k))
    if (out / "adapter_config.json").exists() and read_training_status(out) == "done":
        return out
    tc = r.cfg.train_config(r.k, n_pairs)
    r.progress.update(0, 1, f"round {r.k}: training")
    return train_adapter(r.run, r.run.pairs_file("self"), ADAPTER.format(r.k), tc, base_model=r.spec,
                         init_adapter=str(r.policy) if r.policy else None, progress=r.progress)


def read_training_status(out: Path) -> str | None:
    import json

    p = out / "training.json"
    return json.loads(p.read_text(encoding="utf-8")).get("status") if p.exists() else None


def eval_round(r: Round, items: list[dict]) -> dict:
    """Base, M(k-1) and M(k) answer the held-out instructions (same seeds); one fixed evaluator scores them (the API
    judge, else the base model); win rates of M(k) per instruction by mean score (tie 0.5), bootstrap intervals."""
    from lab import compare
    from lab.sample import Decoding, generate

    if not items:
        return {"instructions": 0, "chars_mean": {}, "win_rate_vs_base": None, "win_rate_vs_previous": None}
    names = {compare.BASE: None, **({r.policy_name: r.policy_name} if r.policy else {}),
             ADAPTER.format(r.k): ADAPTER.format(r.k)}
    dec = Decoding(r.cfg.temperature, r.cfg.top_p, r.cfg.max_new_tokens, r.cfg.seed)
    reuse_previous(r, set(names), dataclasses.asdict(dec))
    have = {(c["instruction_id"], c["model"]) for c in r.run.read("compare")}
    for name, adapter in names.items():
        todo = [it for it in items if (it["id"], name) not in have]
        if todo:
            r.progress.check_stop()
            r.progress.update(0, 1, f"round {r.k}: evaluating {name}")
            with r.select(adapter) as cm:
                comps = generate(cm, [it["prompt"] for it in todo], 1, dec, r.cfg.batch_size)
            r.started()
            r.run.append("compare", [eval_record(it, name, c[0], r, dec, cm.path) for it, c in zip(todo, comps)])
    rows = [{**c, "set": "eval"} for c in r.run.read("compare") if c["model"] in names]
    score_texts(r, None, rows, lambda row: ("eval", row["instruction_id"], None, row["model"]), r.cfg.seed)
    return eval_summary(r, items, list(names))


def reuse_previous(r: Round, names: set[str], dec: dict) -> None:
    """Copy round k-1's answers and scores of the models it already evaluated (base, M(k-1)): the same instructions,
    decoding, seeds and evaluator give the same numbers, so they are not generated and scored again."""
    if r.previous is None:
        return
    have = {(c["instruction_id"], c["model"]) for c in r.run.read("compare")}
    old = [c for c in r.previous.read("compare") if c["model"] in names and c["decoding"] == dec
           and (c["instruction_id"], c["model"]) not in have]
    keys = {(c["instruction_id"], c["model"]) for c in old}
    scores = [s for s in r.previous.read("scores") if s["set"] == "eval" and s["judge"] == judge_name(r.cfg)
              and (s["instruction_id"], s["model"]) in keys]
    r.run.append("compare", old)
    r.run.append("scores", scores)


def eval_record(item: dict, name: str, c, r: Round, dec, base_path: str) -> dict:
    """A lab.compare record for a round's evaluation (adapter paths: this round's folder or the previous one's)."""
    adapter = None if name == "base" else (r.policy if name == r.policy_name else r.run.adapter_dir(name))
    return {"instruction_id": item["id"], "prompt": item["prompt"], "model": name,
            "adapter_path": str(adapter) if adapter else None, "text": c.text, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason, "base_model": r.spec,
            "base_path": base_path, "decoding": dataclasses.asdict(dec), "key": f"round-{r.k}", "duplicate": None}


def eval_summary(r: Round, items: list[dict], names: list[str]) -> dict:
    from lab import compare

    ids = {it["id"] for it in items}
    acc: dict[tuple[str, str], list[float]] = {}
    for s in r.run.read("scores"):
        if s["set"] == "eval" and s["instruction_id"] in ids and s["score"] is not None:
            acc.setdefault((s["model"], s["instruction_id"]), []).append(s["score"])
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    new = ADAPTER.format(r.k)

    def versus(other: str) -> dict:
        both = [i for i in sorted(ids) if (new, i) in mean and (other, i) in mean]
        return compare.win_rate([1.0 if mean[(new, i)] > mean[(other, i)] else 0.5 if mean[(new, i)] ==
                                 mean[(other, i)] else 0.0 for i in both], _bootstrap_cfg(r.cfg))

    texts = {n: [len(c["text"]) for c in r.run.read("compare") if c["model"] == n and c["instruction_id"] in ids]
             for n in names}
    return {"instructions": len(items), "chars_mean": {n: sum(v) / len(v) for n, v in texts.items() if v},
            "score_mean": {n: _avg([v for (m, _), v in mean.items() if m == n]) for n in names},
            "win_rate_vs_base": versus("base"),
            "win_rate_vs_previous": versus(r.policy_name) if r.policy else None}


def _avg(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _bootstrap_cfg(cfg):
    """lab.compare.win_rate reads bootstrap, confidence and seed from a settings object."""
    from types import SimpleNamespace

    return SimpleNamespace(bootstrap=2000, confidence=0.95, seed=cfg.seed)


def data_round(r: Round, items: list[dict]) -> tuple[list[dict], dict]:
    """Sample, score and pair one round; writes samples.jsonl, scores.jsonl and pairs-self.jsonl of the round.
    Returns (pairs, the round's statistics so far)."""
    samples = sample_round(r, items)
    known = {i["id"] for i in r.run.read("instructions")}  # after sampling: a round that did no work writes nothing
    r.run.append("instructions", [it for it in items if it["id"] not in known])
    score_texts(r, r.policy_name, [{**s, "set": "train"} for s in samples],
                lambda row: ("train", row["instruction_id"], row["sample_index"], None), r.cfg.seed + 100 * r.k)
    scores = r.run.read("scores")
    pairs, kept = build_pairs(samples, scores, r.k)
    write_jsonl(r.run.pairs_file("self"), pairs)
    if not pairs:
        raise LabError(f"Round {r.k}: no pairs to train on ({kept['dropped_ties']} instructions tied, "
                       f"{kept['dropped_unscored']} could not be scored). Use more --samples, more instructions, "
                       f"a higher --temperature, or a stronger --judge; what was sampled and scored is saved in "
                       f"{r.run.path}.")
    return pairs, {"round": r.k, "policy": str(r.policy) if r.policy else None,
                   "reference": str(r.policy) if r.policy else None, "judge": judge_name(r.cfg),
                   "instructions": len(items), **kept, **score_stats(samples, scores, pairs)}


# ---- the stage -------------------------------------------------------------------------------------------------------
def training_instructions(run: Run, cfg) -> list[dict]:
    """The instructions every round answers: the run's own (default) or a source."""
    if cfg.instructions == "run":
        items = run.read("instructions")
        if not items:
            raise LabError(f"Run {run.name} has no instructions yet: sample first (`python -m lab sample --run "
                           f"{run.name}`) or pass --instructions bundled (or a file).")
        return items[:cfg.n or None]
    from lab.instructions import load_instructions

    return [i.to_dict() for i in load_instructions(cfg.instructions, cfg.n or None, cfg.seed)]


def evaluation_instructions(items: list[dict], cfg) -> list[dict]:
    """Held-out instructions for the per-round win rates, minus any that duplicate a training instruction."""
    if not cfg.eval_n:
        return []
    from lab import compare
    from lab.instructions import load_instructions

    held = [i.to_dict() for i in load_instructions(cfg.eval_instructions, None, cfg.seed)]
    dups = compare.find_duplicates(held, {i["id"]: i["prompt"] for i in items}, 0.7)
    kept = [h for h in held if h["id"] not in dups][:cfg.eval_n]
    if not kept:
        raise LabError(f"Every instruction of --eval-instructions {cfg.eval_instructions!r} is (nearly) a training "
                       "instruction: give new ones, or --eval-n 0 to skip the per-round evaluation.")
    return kept


def start_policy(run: Run, cfg, cm) -> Path | None:
    from lab import compare

    if not cfg.start_adapter:
        return None
    found = compare.resolve_adapters(run, cfg.start_adapter)
    compare.check_same_base(found, cfg.model, cm.path)
    return next(iter(found.values()))


def one_round(run: Run, cm, k: int, policy: Path | None, items: list[dict], eval_items: list[dict], judge, cfg,
              progress: Progress, started: Callable[[], None] = lambda: None) -> dict:
    """Round k: data from M(k-1), then DPO (outside any adapter wrapping: training loads its own copy), then the
    evaluation with M(k-1) and M(k) switched on the one base."""
    import json

    from lab import compare

    prev = {ADAPTER.format(k - 1): policy} if policy else {}
    with compare.adapters_on(cm, prev) as select:
        r = Round(k, run.iteration(k), cfg.model, policy, select, judge, cfg, progress,
                  run.iteration(k - 1) if k > 1 else None, started)
        pairs, line = data_round(r, items)
    adapter = train_round(r, len(pairs))
    with compare.adapters_on(cm, {**prev, ADAPTER.format(k): adapter}) as select:
        r.select = select
        line["eval"] = eval_round(r, eval_items)
    state = json.loads((adapter / "training.json").read_text(encoding="utf-8"))
    return {**line, "adapter": str(adapter), "train": {"global_step": state.get("global_step"),
                                                        "final": state.get("final", {})},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def iterate_run(run: Run, cfg, progress: Progress | None = None, api_key: str | None = None) -> dict:
    """The iterate stage: rounds 1..cfg.rounds of self-rewarding DPO. Finished rounds (iterate.jsonl) are kept and
    skipped; an interrupted round resumes from its files (samples, scores, the training checkpoint).
    api_key: an API judge's key passed in memory (else read from the environment).
    Holds the run's "iterate" lock: a second iteration of the run is refused."""
    with run.lock("iterate"):
        return _iterate_locked(run, cfg, progress, api_key)


def _iterate_locked(run: Run, cfg, progress: Progress | None, api_key: str | None) -> dict:
    from lab import compare, models

    cfg = dataclasses.replace(cfg, model=compare.base_spec(run, cfg)).validate()
    items = training_instructions(run, cfg)
    eval_items = evaluation_instructions(items, cfg)
    judge = api_backend(cfg, api_key)  # a missing API key fails here, before any work
    cm = models.load(cfg.model, cfg.device, cfg.dtype)
    policy = start_policy(run, cfg, cm)
    started = once(lambda: run.record_stage("iterate", {
        **cfg.to_dict(), "base_path": cm.path, "judge_name": judge_name(cfg), "prompt_hash": PROMPT_HASH,
        "instruction_ids": [i["id"] for i in items], "eval_instruction_ids": [i["id"] for i in eval_items]}))
    done = {line["round"]: line for line in run.read("iterate")}
    progress = progress or Progress("iterate")
    for k in range(1, cfg.rounds + 1):
        if k not in done:
            done[k] = one_round(run, cm, k, policy, items, eval_items, judge, cfg, progress, started)
            started()
            run.append("iterate", [done[k]])
        policy = Path(done[k]["adapter"])
    progress.close()
    return {"run": run.name, "rounds": [round_summary(done[k]) for k in range(1, cfg.rounds + 1)]}


def round_summary(line: dict) -> dict:
    ev = line.get("eval") or {}
    pick = lambda w: None if not w else {k: w[k] for k in ("win_rate", "ci_low", "ci_high", "n")}  # noqa: E731
    return {"round": line["round"], "adapter": line["adapter"], "pairs_kept": line["pairs_kept"],
            "dropped_ties": line["dropped_ties"], "score_mean": line["score_mean"],
            "win_rate_vs_base": pick(ev.get("win_rate_vs_base")),
            "win_rate_vs_previous": pick(ev.get("win_rate_vs_previous"))}


def lineage(run: Run) -> list[dict]:
    """Every finished round, in order (the app's table and plots read this)."""
    return sorted(run.read("iterate"), key=lambda line: line["round"])
