"""Base vs adapters on held-out instructions: completions side by side, and numbers that say what changed.

The base model is loaded once; every adapter is loaded onto it with PEFT and switched with `set_adapter` (the base's
own answers come from inside `disable_adapter()`), so memory holds one model plus a few LoRA matrices, not N models.
Every model answers the same instructions in the same batches with the same seeds (lab.generation seeds each
batch from the seed and the prompts it holds), so differences come from the weights, not from the dice.

compare.jsonl, one line per (instruction, model) completion:

    {"instruction_id": str, "prompt": str, "model": "base" | adapter name, "adapter_path": str | null,
     "text": str, "prompt_tokens": int, "completion_tokens": int, "finish_reason": "stop" | "length",
     "base_model": spec, "base_path": str, "decoding": {"temperature", "top_p", "max_new_tokens", "seed"},
     "key": str,                               # hash of base + decoding: records of other settings are history
     "adapter_hash": str | null,               # hash of the adapter's files (a retrained adapter is redone)
     "duplicate": null | {"of": training instruction id, "kind": "exact" | "near", "similarity": float},
     "instruction_id_list": [str], "kwargs": [dict]}   # only for verifiable instructions: their IFEval checks

compare-scores.json (whole file, rewritten by `score`):

    {"key", "models": [names], "n_instructions", "flagged": [ids kept though they duplicate training ones],
     "confidence", "bootstrap",
     "per_model": {name: {"mean_chars", "mean_tokens", "chars_change", "chars_change_pct", "truncated_rate",
                          "distinct_1", "distinct_2", "refusal_rate"}},
     "win_rates": {adapter: {scorer: lab.stats.win_rate dict + lab.stats.lc_win_rate dict}},  # against the base
     "outcomes": {adapter: {scorer: {instruction_id: 1 | 0.5 | 0 | null}}},  # per instruction, against the base:
                                                            # what win_rates counts (null: the scorer had no verdict)
     "head_to_head": {"<adapter> vs <earlier adapter>": {scorer: the same}},
     "checks": lab.compare.checks_summary's dict, on verifiable instructions only,
     "values": {scorer: {"mean": {model: float},          # scorers that grade each answer alone (the reward
                         "difference": {adapter: lab.stats.paired_difference dict}}}}  # model): the mean
                                                            # value per model, and the paired difference against
                                                            # the base per instruction (lab.stats.paired_difference)
     (a win rate dict: "win_rate", "ci_low", "ci_high", "n", "wins", "ties", "losses", and the length-controlled
      "lc_win_rate", "lc_ci_low", "lc_ci_high", "length_coef", "length_scale"; and where it came from: "grader"
      and "grader_id" (lab.graders), "circular" (lab.graders.circular: set when that grader also made the pairs the
      adapter trained on, so the number partly measures the grader's own taste); head-to-head rates carry neither)

Scorers (SCORERS): "pairrm" (PairRM's both-orders preference), "judge" (the LLM judge, every pair of models in both
orders, position-calibrated where they disagree (lab.verdicts): a tie or an undecided disagreement count 0.5),
"score" (mean 5-point scores, lab.score; their records go to the run's scores.jsonl as set "eval"), "reward" (a
reward model's reward per answer, lab.reward: the higher reward wins; its mean per model and the paired difference
against the base go to "values") and "checks" (IFEval's checks of verifiable instructions, lab.checks: the answer
passing more of its checks wins; beside the win rates, IFEval's four accuracies per model and each adapter's paired
difference against the base, with bootstrap intervals over prompts). Win rates count
a win as 1, a tie as 0.5 and a loss as 0, per instruction; the interval is a percentile bootstrap over instructions
(lab.stats.win_rate).
notes.json holds the user's own notes: {"overall": str, "instructions": {id: str}, "updated"}.
The module writes no prose about the results: the numbers, the grid and the user's notes are the analysis.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from lab import cards, checks, efficiency, graders, limits, models, precision, rank
from lab.adapters import BASE, adapters_on, check_same_base, fingerprint, resolve_adapters
from lab.config import Settings, opt
from lab.errors import LabError
from lab.generation import ENGINE_CHOICES, ENGINE_HELP, Completion, Decoding, engine_record, generate, pick_engine, \
    ShiftedProgress, vllm_units
from lab.instructions import load_instructions
from lab.judge import JudgeConfig, judge_run
from lab.judge_backends import API_BACKENDS, BACKENDS, resolve_key
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.sample import check_decoding, sample_record
from lab.score import Scorer, ScoreConfig, api_backend, mean_scores, score_rows
from lab.stats import LOSS, TIE, WIN, lc_win_rate, mean_ci, outcome, paired_difference, win_rate
from lab.stats import mean as stat_mean
from lab.store import Run, atomic_write_json, atomic_write_text, once, read_jsonl, write_jsonl
from lab.verdicts import run_verdicts

SHINGLE = 5  # character n-grams for near-duplicate detection: robust to small rewordings and typos
REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i am sorry,? but|i can(?:'|no)t (?:help|assist|provide|do|answer|comply|fulfil)|"
    r"i (?:am|'m) (?:not able|unable) to|i won'?t be able to|as an ai\b|as a language model|i must decline|"
    r"i cannot (?:help|assist|provide|comply)|i can'?t (?:help|assist|provide|comply))",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 300  # a refusal shows in the opening of an answer; later "I can't stress enough" is not one


@dataclass
class CompareConfig(Settings):
    model: str = opt("", "base model spec (default: the model this run sampled with)")
    instructions: str = opt("heldout", "held-out instructions: 'heldout' (bundled), 'checks-heldout' (bundled, with "
                            "IFEval checks), or a file (with IFEval's instruction_id_list and kwargs: checked too)")
    n: int = opt(0, "how many held-out instructions (0 = all)", label="Instructions (0 = all)")
    adapters: str = opt("", "comma-separated adapter names of this run (default: every adapter)")
    temperature: float = opt(0.7, "sampling temperature, the same for every model (0 = greedy)", label="Temperature")
    top_p: float = opt(0.9, "nucleus sampling threshold, the same for every model (1 = off)", label="Top-p")
    max_new_tokens: int = opt(256, "longest completion, in tokens", label="Max new tokens")
    seed: int = opt(0, "seed for sampling (every model gets the same) and for the bootstrap", label="Seed")
    batch_size: int = opt(32, "instructions generated together (lower it if memory runs out)", label="Batch size")
    duplicates: str = opt("drop", "held-out instructions that duplicate training ones: drop, flag (keep, marked) "
                          "or refuse", ("drop", "flag", "refuse"), label="Duplicates of training instructions")
    near_duplicate: float = opt(0.7, "character 5-gram Jaccard similarity from which an instruction is a near "
                                "duplicate", label="Near-duplicate threshold")
    pairrm: str = opt("", "PairRM ranker for win rates: llm-blender/PairRM, a local folder or tiny-random (noise) "
                      "('' = skip)", label="PairRM")
    reward: str = opt("", "reward model for rewards and win rates: a hub id or folder of a one-label sequence "
                      "classifier (e.g. Skywork/Skywork-Reward-V2-Qwen3-0.6B) or tiny-reward (noise) ('' = skip)",
                      label="Reward model")
    judge: str = opt("none", "LLM judge for win rates, every pair of models in both orders: none or a judge "
                     "backend (local is offline and weak)", ("none", *BACKENDS), label="LLM judge")
    judge_model: str = opt("", "the judge's model (default: the judge backend's default)", label="Judge model")
    judge_rpm: float = opt(30.0, "API judge: most requests per minute (0 = no limit); the base URL comes from "
                           "$GROQ_BASE_URL / $OPENAI_BASE_URL when set")
    score: str = opt("none", "5-point additive scores for win rates (lab.score): none, base (the base model scores "
                     "every answer, self-rewarding's evaluator) or an API judge", ("none", "base", *API_BACKENDS),
                     label="5-point scorer")
    score_model: str = opt("", "API scorer model (default: the backend's default)", label="Scorer model")
    score_evaluations: int = opt(3, "times each answer is scored by the 5-point scorer (averaged)")
    score_tokens: int = opt(160, "longest 5-point judgment, in tokens")
    score_temperature: float = opt(0.7, "sampling temperature of the 5-point judgments")
    checks: bool = opt(True, "score with the instructions' own IFEval checks where they carry them (no model, "
                       "instant, unbiased)", label="Verifiable checks")
    bootstrap: int = opt(2000, "bootstrap resamples for the win-rate confidence intervals")
    confidence: float = opt(0.95, "confidence level of the intervals")
    export: str = opt("csv,jsonl,md", "grid exports the command line writes into the run: csv, jsonl, md "
                      "(comma-separated; '' = none)")
    engine: str = opt("auto", ENGINE_HELP + " (vllm: base and every adapter in one call, adapters as LoRA requests)",
                      ENGINE_CHOICES, label="Engine")
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)

    def validate(self) -> "CompareConfig":
        check_decoding(self.temperature, self.top_p, self.max_new_tokens, self.batch_size)
        if self.n < 0:
            raise LabError(f"--n must be 0 (all) or more (got {self.n}).")
        if not 0 < self.near_duplicate <= 1:
            raise LabError(f"--near-duplicate must be in (0, 1] (got {self.near_duplicate}); 0.7 is a good start.")
        if self.bootstrap < 100 or not 0.5 <= self.confidence < 1:
            raise LabError("--bootstrap must be at least 100 and --confidence in [0.5, 1), e.g. 2000 and 0.95.")
        if self.score != "none":
            self.score_config().validate()
        return self

    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.max_new_tokens, self.seed)

    def score_config(self) -> ScoreConfig:
        """The 5-point scorer's settings (lab.score), from the comparison's."""
        return ScoreConfig(judge="self" if self.score == "base" else self.score, judge_model=self.score_model,
                           evaluations=self.score_evaluations, judge_tokens=self.score_tokens,
                           judge_temperature=self.score_temperature, rpm=self.judge_rpm,
                           seed=self.seed, batch_size=self.batch_size, engine=self.engine, device=self.device,
                           dtype=self.dtype)


# ---- held-out instructions and duplicates of training instructions ----------------------------------------------
def normalize(text: str) -> str:
    """Case-, accent-width- and punctuation-insensitive form: 'How do I...?' == 'how do i'."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower()))


def shingles(text: str, n: int = SHINGLE) -> frozenset[str]:
    t = normalize(text)
    return frozenset(t[i:i + n] for i in range(max(1, len(t) - n + 1)))


def training_prompts(run: Run) -> dict[str, str]:
    """{id: prompt} of everything the run trained on or could have: instructions.jsonl, the prompts of every pairs
    file, and those of every self-rewarding round."""
    out = {r["id"]: r["prompt"] for r in run.read("instructions")}
    runs = [run] + [run.iteration(k) for k in run.iterations()]
    for pair in (p for r in runs for source in r.pair_sources() for p in read_jsonl(r.pairs_file(source))):
        out.setdefault(pair.get("meta", {}).get("instruction_id") or str(len(out)), pair["prompt"][-1]["content"])
    return out


def find_duplicates(heldout: list[dict], training: dict[str, str], threshold: float) -> dict[str, dict]:
    """{held-out id: {"of", "kind", "similarity"}} for exact (same normalized text) and near duplicates
    (Jaccard similarity of character 5-gram sets >= threshold)."""
    exact = {normalize(p): i for i, p in training.items()}
    train_sh = [(i, shingles(p)) for i, p in training.items()]
    found = {}
    for h in heldout:
        if normalize(h["prompt"]) in exact:
            found[h["id"]] = {"of": exact[normalize(h["prompt"])], "kind": "exact", "similarity": 1.0}
            continue
        hs = shingles(h["prompt"])
        best = max(((len(hs & s) / len(hs | s), i) for i, s in train_sh), default=(0.0, None))
        if best[0] >= threshold:
            found[h["id"]] = {"of": best[1], "kind": "near", "similarity": round(best[0], 3)}
    return found


def heldout_instructions(run: Run, cfg: "CompareConfig", items: list[dict] | None = None
                         ) -> tuple[list[dict], dict[str, dict]]:
    """The instructions to compare on (`items`, else cfg.instructions), after the duplicate policy:
    (instructions, duplicates found)."""
    if items is None:
        items = [i.to_dict() for i in load_instructions(cfg.instructions, cfg.n or None, cfg.seed)]
    dups = find_duplicates(items, training_prompts(run), cfg.near_duplicate)
    listing = "; ".join(f"{k} ~ {v['of']} ({v['kind']}, {v['similarity']:.2f})" for k, v in list(dups.items())[:5])
    if dups and len(dups) == len(items):
        raise LabError(f"All {len(items)} held-out instructions from {cfg.instructions!r} are training instructions "
                       f"of this run (or near copies: {listing}): a comparison on them measures memory, not "
                       "generalisation. Use --instructions heldout or a file of new instructions.")
    if dups and cfg.duplicates == "refuse":
        raise LabError(f"{len(dups)} held-out instruction(s) duplicate training ones: {listing}. Remove them, or "
                       "pass --duplicates drop (skip them) or --duplicates flag (keep and mark them).")
    if cfg.duplicates == "drop":
        items = [i for i in items if i["id"] not in dups]
    return items, dups


# ---- generation ----------------------------------------------------------------------------------------------------
def model_key(cfg: CompareConfig, engine: str = "lab") -> str:
    """The key of a comparison's completions: records with another key were made with other settings (or by
    another engine: the two draw different samples at one seed)."""
    what = {"model": cfg.model, "decoding": cfg.decoding().to_dict(), "batch_size": cfg.batch_size}
    raw = json.dumps({**what, **({"engine": engine} if engine != "lab" else {})}, sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:10]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def compare_record(item: dict, completion, name: str, adapter: Path | None, base_path: str, cfg: CompareConfig,
                   key: str, duplicate: dict | None, adapter_hash: str | None) -> dict:
    """One compare.jsonl line (the format in the module docstring)."""
    return {"instruction_id": item["id"], "prompt": item["prompt"], "model": name,
            "adapter_path": str(adapter) if adapter else None, "text": completion.text,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason, "base_model": cfg.model, "base_path": base_path,
            "decoding": cfg.decoding().to_dict(), "key": key, "duplicate": duplicate, "adapter_hash": adapter_hash,
            **checks.fields_of(item)}


def complete_all(run: Run, select, adapters: dict[str, Path], items: list[dict], cfg: CompareConfig, key: str,
                 dups: dict, progress: Progress, started: Callable[[], None] = lambda: None) -> int:
    """Generate every missing (model, chunk) unit, appending each chunk as it finishes (`started()` is called just
    before each append: lab.store.once records the settings with the first). Returns records written."""
    prints = {name: fingerprint(path) for name, path in adapters.items()}
    have = {(r["instruction_id"], r["model"], r.get("adapter_hash")) for r in run.read("compare")
            if r.get("key") == key}
    names = [BASE, *adapters]
    units = [(n, ch) for n in names for ch in chunks(items, cfg.batch_size)
             if any((it["id"], n, prints.get(n)) not in have for it in ch)]
    done, total, written = len(names) * len(items) - sum(len(ch) for _, ch in units), len(names) * len(items), 0
    for name, chunk in units:
        progress.check_stop()
        progress.update(done, total, "comparing")
        with select(None if name == BASE else name) as cm:  # the count moves per decode step, not per chunk
            comps = generate(cm, [it["prompt"] for it in chunk], 1, cfg.decoding(), cfg.batch_size,
                             ShiftedProgress(progress, done, total, "comparing", stops=False))
        recs = [compare_record(it, c[0], name, adapters.get(name), cm.path, cfg, key, dups.get(it["id"]),
                               prints.get(name)) for it, c in zip(chunk, comps)]
        started()
        written += run.append("compare", recs)
        done += len(chunk)
    progress.update(done, total, "comparing")
    return written


def complete_all_vllm(run: Run, cm, adapters: dict[str, Path], items: list[dict], cfg: CompareConfig, key: str,
                      dups: dict, progress: Progress, started: Callable[[], None] = lambda: None) -> int:
    """Every missing (model, instruction) completion in ONE vLLM call: the base and each adapter (a LoRA request)
    answer an instruction with the same seed (salt: its id). Each record is appended as it arrives."""
    prints = {name: fingerprint(path) for name, path in adapters.items()}
    have = {(r["instruction_id"], r["model"], r.get("adapter_hash")) for r in run.read("compare")
            if r.get("key") == key}
    todo = [(n, it) for n in [BASE, *adapters] for it in items if (it["id"], n, prints.get(n)) not in have]
    encoded = {it["id"]: cm.encode_prompt(it["prompt"]) for _, it in todo}
    total, written = (1 + len(adapters)) * len(items), [0]

    def take(u: int, _j: int, c: Completion) -> None:
        name, it = todo[u]
        started()
        written[0] += run.append("compare", [compare_record(it, c, name, adapters.get(name), cm.path, cfg, key,
                                                            dups.get(it["id"]), prints.get(name))])

    if todo:
        vllm_units(cm, [(it["id"], [0]) for _, it in todo], encoded, cfg.decoding(), [it["id"] for _, it in todo],
                   [adapters.get(n) for n, _ in todo], ShiftedProgress(progress, total - len(todo), total,
                                                                       "comparing"), take)
    return written[0]


def check_scorers(cfg: CompareConfig, api_key: str | None) -> None:
    """Fail before any generation if a scorer cannot run: no API key (lab.judge_backends.resolve_key: the same rule
    the judge applies), or a PairRM or reward model that cannot be found (or is the other kind)."""
    for flag, backend, offline in (("--judge", cfg.judge, "local"), ("--score", cfg.score, "base")):
        if backend in API_BACKENDS:
            try:
                resolve_key(backend, "", api_key, local=f"{flag} {offline}")
            except LabError as e:
                raise LabError(f"{flag} {backend} needs an API key: {e} Or pick another scorer (local / base are "
                               "offline and weak) or none.") from None
    for flag, spec, kind in (("--pairrm", cfg.pairrm, "pairrm"), ("--reward", cfg.reward, "reward")):
        if spec and rank.kind_of(rank.resolve_ranker(spec), spec) != kind:
            other = "--reward" if kind == "pairrm" else "--pairrm"
            raise LabError(f"{flag} {spec}: that is not a {rank.RANKERS[kind].label} but a "
                           f"{rank.RANKERS[other.strip('-')].label}: pass it as {other}.")


def compare_run(run: Run, cfg: CompareConfig, progress: Progress | None = None, api_key: str | None = None,
                items: list[dict] | None = None, adapters: dict[str, Path] | None = None) -> dict:
    """The compare stage: completions of base and adapters on held-out instructions, then the scores.
    Resumes: (model, chunk) units already in compare.jsonl with the same settings are not generated again.
    api_key: an API scorer's key, passed in memory by the app (else read from the environment).
    items / adapters: the instructions and {name: adapter folder} to compare (self-rewarding rounds pass theirs);
    default cfg.instructions and cfg.adapters. Holds the run's "compare" lock: a second comparison is refused."""
    with run.lock("compare"), efficiency.measure(run, "compare"):
        return _compare_locked(run, cfg, progress, api_key, items, adapters)


def _compare_locked(run: Run, cfg: CompareConfig, progress: Progress | None, api_key: str | None,
                    items: list[dict] | None, adapters: dict[str, Path] | None) -> dict:
    cfg = replace(cfg, model=models.run_model(run, cfg.model)).validate()
    adapters = adapters if adapters is not None else resolve_adapters(run, cfg.adapters)
    items, dups = heldout_instructions(run, cfg, items)
    check_scorers(cfg, api_key)
    engine = pick_engine(cfg.engine, precision.probe(cfg.device).kind)
    progress = progress or Progress("comparing")
    progress.loading(f"model {cfg.model}")
    cm = models.load(cfg.model, cfg.device, cfg.dtype) if engine == "lab" else models.load_chat_tokenizer(cfg.model)
    check_same_base(adapters, cfg.model, cm.path)
    key = model_key(cfg, engine)
    settings = {**cfg.to_dict(), "key": key, "base_path": cm.path, "models": [BASE, *adapters],
                "instruction_ids": [i["id"] for i in items], "duplicates_found": dups, **engine_record(engine),
                "checked_ids": [i["id"] for i in items if checks.has_checks(i)],
                "adapter_paths": {name: str(path) for name, path in adapters.items()}}
    started = once(lambda: run.record_stage("compare", settings))  # with the first completion, or once scored
    if engine == "vllm":
        written = complete_all_vllm(run, cm, adapters, items, cfg, key, dups, progress, started)
    else:
        with adapters_on(cm, adapters) as select:
            written = complete_all(run, select, adapters, items, cfg, key, dups, progress, started)
    progress.close()
    scores = score(run, cfg, progress, api_key, settings)
    started()
    return {"run": run.name, "models": [BASE, *adapters], "instructions": len(items), "written_now": written,
            "duplicates": len(dups), "scores": str(run.file("compare_scores")), "win_rates": scores["win_rates"],
            "head_to_head": scores["head_to_head"],
            **({"checks": {k: scores["checks"][k] for k in ("n", "per_model", "vs_base")}} if "checks" in scores
               else {})}


# ---- the grid ----------------------------------------------------------------------------------------------------
def current(run: Run, st: dict | None = None) -> tuple[list[dict], dict]:
    """Records of a comparison (its key, its instructions, its models) and its settings: those given (a comparison
    not recorded yet), else the latest in run.json."""
    st = st or run.stage_settings("compare")
    if not st:
        raise LabError(f"Run {run.name} has no comparison yet: compare first (`python -m lab compare --run "
                       f"{run.name}`).", ui=f"Run {run.name} has no comparison yet: press Compare first.")
    ids, names = set(st["instruction_ids"]), set(st["models"])
    latest: dict[tuple, dict] = {}
    for r in run.read("compare"):
        if r.get("key") == st["key"] and r["instruction_id"] in ids and r["model"] in names:
            latest[(r["instruction_id"], r["model"])] = r
    return list(latest.values()), st


def grid(run: Run):
    """pandas DataFrame: one row per instruction (index: instruction_id), columns prompt, duplicate_of, then one
    column per model (base first) holding its completion."""
    import pandas as pd

    records, st = current(run)
    order = {i: n for n, i in enumerate(st["instruction_ids"])}
    df = pd.DataFrame(records)
    if df.empty:
        return pd.DataFrame(columns=["prompt", "duplicate_of", *st["models"]]).rename_axis("instruction_id")
    wide = df.pivot(index="instruction_id", columns="model", values="text")
    meta = df.drop_duplicates("instruction_id").set_index("instruction_id")
    dup_of = [d["of"] if isinstance(d, dict) else None for d in meta["duplicate"].reindex(wide.index)]
    wide.insert(0, "duplicate_of", pd.Series(dup_of, index=wide.index, dtype=object))
    wide.insert(0, "prompt", meta["prompt"])
    wide = wide.reindex(columns=["prompt", "duplicate_of", *st["models"]])
    wide.columns.name = None
    return wide.sort_index(key=lambda ix: ix.map(order))


def markdown_table(df) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs `tabulate`, which the project does not ship)."""
    def cell(v) -> str:  # markup in an instruction or an answer shows as text (lab.cards.cell)
        return "" if v is None or v != v else cards.cell(str(v), newline="<br>")  # v != v: NaN

    cols = [df.index.name or "", *map(str, df.columns)]
    rows = [[cell(ix), *(cell(v) for v in row)] for ix, row in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def export(run: Run, fmt: str) -> Path:
    """Write the grid as csv, jsonl or md into the run; returns the file's path."""
    df = grid(run)
    if fmt == "csv":
        path = run.file("compare_csv")
        atomic_write_text(path, df.to_csv())
    elif fmt == "jsonl":
        path = run.file("compare_grid")
        write_jsonl(path, df.reset_index().astype(object).where(df.reset_index().notna(), None).to_dict("records"))
    elif fmt in ("md", "markdown"):
        path = run.file("compare_md")
        atomic_write_text(path, markdown_table(df))
    else:
        raise LabError(f"Unknown export format {fmt!r}: use csv, jsonl or md.")
    return path


# ---- scores ------------------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over every text of one model (0 if none)."""
    grams = [tuple(w[i:i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text[:REFUSAL_WINDOW]))


def text_stats(records: list[dict], base_chars: float | None) -> dict:
    """Length, its change against the base, distinct-1/2 and refusal rate of one model's completions."""
    texts = [r["text"] for r in records]
    chars = sum(map(len, texts)) / max(len(texts), 1)
    change = None if base_chars is None else chars - base_chars
    return {"n": len(texts), "mean_chars": chars, "mean_tokens": sum(r["completion_tokens"] for r in records) /
            max(len(texts), 1), "chars_change": change,
            "chars_change_pct": None if not base_chars or change is None else 100 * change / base_chars,
            "truncated_rate": sum(r["finish_reason"] == "length" for r in records) / max(len(texts), 1),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "refusal_rate": sum(map(is_refusal, texts)) / max(len(texts), 1)}


def by_model(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{model: {instruction_id: record}}"""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        out.setdefault(r["model"], {})[r["instruction_id"]] = r
    return out


Outcome = Callable[[str, str, str], "float | None"]  # (instruction id, model a, model b) -> a's outcome against b


@dataclass(frozen=True)
class CompareScorer:
    label: str  # in the app and the tables
    enabled: Callable[[CompareConfig, dict], bool]  # (cfg, the comparison's settings)
    outcomes: Callable[..., Outcome]  # (run, cfg, table, st, progress, api_key) -> Outcome
    grader: Callable[[CompareConfig, dict], dict]  # (cfg, st) -> lab.graders grader dict: who made the numbers
    summary: Callable[..., dict] | None = None  # (table, st, cfg) -> more numbers, under the scorer's name


def score(run: Run, cfg: CompareConfig, progress: Progress | None = None, api_key: str | None = None,
          settings: dict | None = None) -> dict:
    """Compute every score of a comparison (`settings` as compare_run records them; default: the latest in
    run.json) and write compare-scores.json: text statistics per model, and for each scorer switched on the win
    rate of every adapter against the base and of every adapter against each adapter before it."""
    records, st = current(run, settings)
    table = by_model(records)
    flagged = sorted(i for i in st.get("duplicates_found", {}) if i in set(st["instruction_ids"]))
    base = list(table.get(BASE, {}).values())
    base_chars = text_stats(base, None)["mean_chars"] if base else None
    per_model = {m: text_stats(list(table.get(m, {}).values()), None if m == BASE else base_chars)
                 for m in st["models"]}
    adapters = [m for m in st["models"] if m != BASE]
    wins, h2h, per_instruction, more, values = {m: {} for m in adapters}, {}, {m: {} for m in adapters}, {}, {}
    for name, scorer in SCORERS.items():
        if not scorer.enabled(cfg, st):
            continue
        of, grader = scorer.outcomes(run, cfg, table, st, progress, api_key), scorer.grader(cfg, st)
        if isinstance(of, Values):
            values[name] = of.summary(st, adapters, cfg)
        for n, m in enumerate(adapters):
            per_instruction[m][name] = outcomes_of(of, st, m, BASE)
            wins[m][name] = {**rate_of(per_instruction[m][name], cfg, table, m, BASE),
                             **graders.provenance(grader, graders.trained_on(run, st, m))}
            for earlier in adapters[:n]:
                h2h.setdefault(f"{m} vs {earlier}", {})[name] = rate_of(outcomes_of(of, st, m, earlier), cfg,
                                                                        table, m, earlier)
        if scorer.summary:
            more[name] = scorer.summary(table, st, cfg)
    scores = {"key": st["key"], "models": st["models"], "n_instructions": len(st["instruction_ids"]),
              "flagged": flagged, "confidence": cfg.confidence, "bootstrap": cfg.bootstrap,
              "per_model": per_model, "win_rates": wins, "outcomes": per_instruction, "head_to_head": h2h,
              "values": values, **more, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(run.file("compare_scores"), scores)
    return scores


def outcomes_of(of: Outcome, st: dict, a: str, b: str) -> dict[str, float | None]:
    """{instruction id: model a's outcome against model b} over the comparison's instructions."""
    return {iid: of(iid, a, b) for iid in st["instruction_ids"]}


def rate_of(got: dict[str, float | None], cfg: CompareConfig, table: dict, a: str, b: str) -> dict:
    """The win rate of model a against model b over per-instruction outcomes (unreadable ones, None, left out), and
    beside it the length-controlled win rate (lab.stats.lc_win_rate: the win rate at equal answer length)."""
    kept = [(g, iid) for iid, g in got.items() if g is not None]
    gaps = [len(table[a][iid]["text"]) - len(table[b][iid]["text"]) for _, iid in kept]
    outcomes = [g for g, _ in kept]
    return {**win_rate(outcomes, cfg.bootstrap, cfg.confidence, cfg.seed),
            **lc_win_rate(outcomes, gaps, cfg.bootstrap, cfg.confidence, cfg.seed)}


def read_scores(run: Run) -> dict | None:
    """compare-scores.json if it belongs to the run's latest comparison (the same key and models), else None."""
    path, st = run.file("compare_scores"), run.stage_settings("compare")
    if not path.exists() or not st:
        return None
    scores = json.loads(path.read_text(encoding="utf-8"))
    return scores if scores.get("key") == st.get("key") and scores.get("models") == st.get("models") else None


def scoring_run(run: Run, table: dict, st: dict) -> tuple[Run, dict[str, int]]:
    """The comparison as a nested run that lab.rank and lab.judge read like any other: one instruction per held-out
    instruction, sample 0 the base's completion, sample i the i-th adapter's. One folder per comparison key and
    model list, so sample indices always mean the same models (and the judge's cache still skips repeated calls).
    Returns (nested run, {model name: sample index})."""
    tag = hashlib.sha1(json.dumps([st["key"], st["models"]]).encode()).hexdigest()[:10]
    nested = Run(run.file("compare_scoring") / tag)
    index = {m: i for i, m in enumerate(st["models"])}
    samples = []
    for iid in st["instruction_ids"]:
        seen: dict[str, int] = {}
        for m, i in index.items():
            r = table.get(m, {}).get(iid)
            if r is not None:
                first = seen.setdefault(r["text"], i)
                samples.append(sample_record(iid, i, r["prompt"], _completion(r), m, r["adapter_path"] or
                                             r["base_path"], r["decoding"], first if first != i else None))
    write_jsonl(nested.file("samples"), samples)
    return nested, index


def _completion(record: dict) -> Completion:
    return Completion(record["text"], record["prompt_tokens"], record["completion_tokens"], record["finish_reason"])


def pairrm_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Outcome:
    """PairRM's both-orders preference between two models' completions (rankings: lab.rank records in the nested
    scoring run; a rerun with the same texts ranks nothing again)."""
    nested, index = scoring_run(run, table, st)
    rank.rank_run(nested, rank.RankConfig(ranker=cfg.pairrm, device=cfg.device, dtype=cfg.dtype), progress)
    records = rank.latest_rankings(nested, ranker=cfg.pairrm)

    def of(iid: str, a: str, b: str) -> float | None:
        rec, i, j = records.get(iid), index[a], index[b]
        if rec is None or not {i, j} <= set(rec["sample_indices"]):
            return None
        return outcome(rank.preference(rec, i, j), 0.0)
    return of


@dataclass
class Values:
    """The outcomes of a scorer that grades each answer alone: {model: {instruction id: value}}; the higher value
    wins (an Outcome), and score() also reports the mean per model and the paired difference against the base."""

    values: dict[str, dict[str, float]]

    def __call__(self, iid: str, a: str, b: str) -> float | None:
        va, vb = self.values.get(a, {}).get(iid), self.values.get(b, {}).get(iid)
        return None if va is None or vb is None else outcome(va, vb)

    def summary(self, st: dict, adapters: list[str], cfg: CompareConfig) -> dict:
        """{"mean": {model: mean value}, "difference": {adapter: lab.stats.paired_difference against the base}}."""
        means = {m: stat_mean(self.values.get(m, {}).values()) for m in st["models"]}
        base = self.values.get(BASE, {})
        both = {m: [iid for iid in self.values.get(m, {}) if iid in base] for m in adapters}
        return {"mean": means, "difference": {
            m: paired_difference([self.values[m][i] for i in ids], [base[i] for i in ids], cfg.bootstrap,
                                 cfg.confidence, cfg.seed) for m, ids in both.items()}}


def reward_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Values:
    """A reward model's reward for every model's answer (lab.rank records of the nested scoring run, kind
    "reward"; a rerun with the same texts scores nothing again): the higher reward wins."""
    nested, index = scoring_run(run, table, st)
    rank.rank_run(nested, rank.RankConfig(ranker=cfg.reward, device=cfg.device, dtype=cfg.dtype), progress)
    values: dict[str, dict[str, float]] = {}
    for iid, rec in rank.latest_rankings(nested, ranker=cfg.reward).items():
        reward_of = dict(zip(rec["sample_indices"], rec["scores"]))
        for m, i in index.items():
            if i in reward_of:
                values.setdefault(m, {})[iid] = reward_of[i]
    return Values(values)


def judge_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                   api_key: str | None = None) -> Outcome:
    """The LLM judge (lab.judge, plan "full": every pair of models judged in both orders, calibrated where they
    disagree: lab.verdicts.run_verdicts): win 1; tie or an undecided disagreement 0.5; loss 0; unreadable verdicts
    left out. Identical completions tie without a call."""
    nested, index = scoring_run(run, table, st)
    samples = nested.read("samples")
    twin = {(s["instruction_id"], s["sample_index"]): s["duplicate_of"] for s in samples}  # the judge skips twins
    if any(d is None and s["sample_index"] > 0 for s, d in zip(samples, twin.values())):
        judge_run(nested, JudgeConfig(backend=cfg.judge, model=cfg.judge_model, plan="full", rpm=cfg.judge_rpm,
                                      device=cfg.device, dtype=cfg.dtype), progress, api_key=api_key)
    verdicts = {(v["instruction_id"], v["a"], v["b"]): v["verdict"] for v in run_verdicts(nested)}
    value = {"a": WIN, "b": LOSS, "tie": TIE, "inconsistent": TIE}  # for the lower sample index

    def of(iid: str, a: str, b: str) -> float | None:
        if (iid, index[a]) not in twin or (iid, index[b]) not in twin:
            return None
        i, j = (twin[(iid, x)] if twin[(iid, x)] is not None else x for x in (index[a], index[b]))
        if i == j:
            return TIE
        v = value.get(verdicts.get((iid, min(i, j), max(i, j)), "invalid"))
        return v if v is None or i < j else WIN + LOSS - v
    return of


def score_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                   api_key: str | None = None) -> Outcome:
    """Mean 5-point scores (lab.score, written to this run's scores.jsonl as set "eval"): the higher mean wins."""
    scfg = cfg.score_config()
    rows = [{**r, "set": "eval"} for m in st["models"] for r in table.get(m, {}).values()]
    judge = api_backend(scfg, api_key)
    local = None if judge else (lambda: nullcontext(models.load(cfg.model, cfg.device, cfg.dtype)))
    engine = "lab" if judge else pick_engine(cfg.engine, precision.probe(cfg.device).kind)
    prompter = models.load_chat_tokenizer(cfg.model) if engine == "vllm" else None
    score_rows(run, rows, Scorer(scfg, judge, local, engine, prompter), progress or Progress("scoring", quiet=True),
               "scoring (5-point)")
    means = mean_scores([s for s in run.read("scores") if s["judge"] == scfg.name], "eval")

    def of(iid: str, a: str, b: str) -> float | None:
        if (a, iid) not in means or (b, iid) not in means:
            return None
        return outcome(means[(a, iid)], means[(b, iid)])
    return of


def checked_answers(table: dict, st: dict) -> dict[str, dict[str, checks.Checked]]:
    """{model: {instruction id: its answer checked}} for the comparison's verifiable instructions."""
    ids = set(st["instruction_ids"])
    return {m: {iid: checks.check(r, r["text"]) for iid, r in table.get(m, {}).items()
                if iid in ids and checks.has_checks(r)} for m in st["models"]}


def checks_outcomes(run: Run, cfg: CompareConfig, table: dict, st: dict, progress: Progress | None,
                    api_key: str | None = None) -> Outcome:
    """IFEval checks (lab.checks): the answer with the higher check score (strict pass 1, loose-only 0.5, per check)
    wins; instructions without checks have no outcome."""
    done = checked_answers(table, st)

    def of(iid: str, a: str, b: str) -> float | None:
        if iid not in done.get(a, {}) or iid not in done.get(b, {}):
            return None
        return outcome(done[a][iid].score, done[b][iid].score)
    return of


def checks_summary(table: dict, st: dict, cfg: CompareConfig) -> dict:
    """IFEval's four accuracies per model over its checked answers, with percentile bootstrap intervals over prompts,
    each adapter's paired difference against the base on the prompts both answered (per prompt: adapter minus base,
    resampled together; its own "n"), and per model the failed checks of each answer ("n": the base's prompts):
        {"n", "levels": [lab.checks.LEVELS], "grader": {...},
         "per_model": {model: {level: {"value", "ci_low", "ci_high", "n"}}},
         "vs_base": {adapter: {level: {"diff", "ci_low", "ci_high", "n", "better", "worse"}}},
         "failed": {model: {instruction id: [check types failed, strict]}}}"""
    done = checked_answers(table, st)
    boot = dict(resamples=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    level = lambda m, ids, lv: [checks.per_prompt(done[m][i])[lv] for i in ids]  # noqa: E731
    own = {m: [i for i in st["instruction_ids"] if i in done[m]] for m in st["models"]}
    per_model = {m: {lv: mean_ci(level(m, ids, lv), **boot) for lv in checks.LEVELS} for m, ids in own.items()}
    both = {m: [i for i in own[m] if i in done[BASE]] for m in st["models"] if m != BASE}  # pairs: base answered too
    vs_base = {m: {lv: paired_difference(level(m, ids, lv), level(BASE, ids, lv), **boot) for lv in checks.LEVELS}
               for m, ids in both.items()}
    failed = {m: {i: c.failed() for i, c in done[m].items()} for m in st["models"]}
    return {"n": len(own.get(BASE, [])), "levels": list(checks.LEVELS), "grader": graders.CHECKS,
            "per_model": per_model, "vs_base": vs_base, "failed": failed}


def _has_checks(cfg: CompareConfig, st: dict) -> bool:
    return cfg.checks and bool(st.get("checked_ids"))


SCORERS: dict[str, CompareScorer] = {
    "pairrm": CompareScorer("PairRM", lambda cfg, st: bool(cfg.pairrm), pairrm_outcomes,
                            lambda cfg, st: graders.ranker(cfg.pairrm)),
    "reward": CompareScorer("Reward model", lambda cfg, st: bool(cfg.reward), reward_outcomes,
                            lambda cfg, st: graders.ranker(cfg.reward)),
    "judge": CompareScorer("LLM judge", lambda cfg, st: cfg.judge != "none", judge_outcomes,
                           lambda cfg, st: graders.judge(cfg.judge, cfg.judge_model)),
    "score": CompareScorer("5-point score", lambda cfg, st: cfg.score != "none", score_outcomes,
                           lambda cfg, st: graders.scorer(cfg.score, cfg.score_model, cfg.model)),
    "checks": CompareScorer("Verifiable checks", _has_checks, checks_outcomes, lambda cfg, st: graders.CHECKS,
                            checks_summary),
}


# ---- the user's notes ----------------------------------------------------------------------------------------------
def read_notes(run: Run) -> dict:
    """{"overall": str, "instructions": {instruction_id: str}}"""
    path = run.file("notes")
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {"overall": data.get("overall", ""), "instructions": data.get("instructions", {})}


def save_note(run: Run, text: str, instruction_id: str | None = None) -> dict:
    """Set the overall note (instruction_id None) or one instruction's note; an empty text deletes it."""
    limits.check_text("The note", text)
    notes = read_notes(run)
    if instruction_id is None:
        notes["overall"] = text.strip()
    elif text.strip():
        notes["instructions"][instruction_id] = text.strip()
    else:
        notes["instructions"].pop(instruction_id, None)
    atomic_write_json(run.file("notes"), {**notes, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return notes
