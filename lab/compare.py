"""Base vs adapters on held-out instructions: completions side by side, and numbers that say what changed.

The base model is loaded once; every adapter is loaded onto it with PEFT and switched with `set_adapter` (the base's
own answers come from inside `disable_adapter()`), so memory holds one model plus a few LoRA matrices, not N models.
Every model answers the same instructions in the same batches with the same seeds (lab.generation seeds each
batch from the seed and the prompts it holds), so differences come from the weights, not from the dice.

compare.jsonl's format, `compare_record` and its readers (`current`, `grid`) are lab/records/comparisons.py.

compare-scores.json (whole file, rewritten by `score`):

    {"key", "models": [names], "n_instructions", "flagged": [ids kept though they duplicate training ones],
     "confidence", "bootstrap",
     "per_model": {name: {"mean_chars", "mean_tokens", "chars_change", "chars_change_pct", "truncated_rate",
                          "distinct_1", "distinct_2", "refusal_rate"}},
     "win_rates": {adapter: {scorer: lab.stats.win_rate dict + lab.stats.lc_win_rate dict}},  # against the base
     "outcomes": {adapter: {scorer: {instruction_id: 1 | 0.5 | 0 | null}}},  # per instruction, against the base:
                                                            # what win_rates counts (null: the scorer had no verdict)
     "head_to_head": {"<adapter> vs <earlier adapter>": {scorer: the same}},
     "checks": lab.compare_scorers.checks_summary's dict, on verifiable instructions only,
     "values": {scorer: {"mean": {model: float},          # scorers that grade each answer alone (the reward
                         "difference": {adapter: lab.stats.paired_difference dict}}}}  # model): the mean
                                                            # value per model, and the paired difference against
                                                            # the base per instruction (lab.stats.paired_difference)
     (a win rate dict: "win_rate", "ci_low", "ci_high", "n", "wins", "ties", "losses", and the length-controlled
      "lc_win_rate", "lc_ci_low", "lc_ci_high", "length_coef", "length_scale"; and where it came from: "grader"
      and "grader_id" (lab.graders), "circular" (lab.graders.circular: set when that grader also made the pairs the
      adapter trained on, so the number partly measures the grader's own taste); head-to-head rates carry neither)

The scores and the scorers that make them (SCORERS: pairrm, reward, judge, score, checks) are lab.compare_scorers;
win rates count a win as 1, a tie as 0.5 and a loss as 0, per instruction; the interval is a percentile bootstrap
over instructions (lab.stats.win_rate).
notes.json holds the user's own notes: {"overall": str, "instructions": {id: str}, "updated"}.
The module writes no prose about the results: the numbers, the grid and the user's notes are the analysis.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from lab import cards, checks, efficiency, limits, models, precision, rank
from lab.adapters import BASE, check_same_base, fingerprint, resolve_adapters
from lab.compare_scorers import score
from lab.config import Settings, opt
from lab.errors import LabError
from lab.engines import ENGINE_CHOICES, ENGINE_HELP, ENGINES, pick_engine
from lab.generation import Completion, Decoding, ShiftedProgress, Unit, engine_record
from lab.instructions import load_instructions
from lab.judge_backends import API_BACKENDS, BACKENDS, BASE_URL_ENV, resolve_key
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.records.comparisons import compare_record, grid, read_notes
from lab.sample import check_decoding
from lab.score import ScoreConfig
from lab.store import Run, atomic_write_json, atomic_write_text, once, read_jsonl, write_jsonl

SHINGLE = 5  # character n-grams for near-duplicate detection: robust to small rewordings and typos


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
    judge_rpm: float = opt(30.0, "API judge: most requests per minute (0 = no limit); the base URL comes from " +
                           " / ".join(f"${v}" for v in BASE_URL_ENV.values()) + " when set")
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
    another engine: two engines draw different samples at one seed; an entry that is not `keyed` adds nothing)."""
    what = {"model": cfg.model, "decoding": cfg.decoding().to_dict(), "batch_size": cfg.batch_size}
    raw = json.dumps({**what, **({"engine": engine} if ENGINES[engine].keyed else {})}, sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:10]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def missing_units(run: Run, adapters: dict[str, Path], items: list[dict], cfg: CompareConfig, key: str,
                  whole_chunks: bool) -> list[tuple[str, dict]]:
    """The (model, instruction) completions a comparison lacks, model by model, chunk by chunk (cfg.batch_size
    instructions). whole_chunks: a chunk that lacks any is done whole (an engine that seeds a batch from what it
    holds draws a chunk's answers together, so a resume must redo the chunk to draw what a fresh run would)."""
    prints = {name: fingerprint(path) for name, path in adapters.items()}
    have = {(r["instruction_id"], r["model"], r.get("adapter_hash")) for r in run.read("compare")
            if r.get("key") == key}
    out = []
    for name in [BASE, *adapters]:
        for chunk in chunks(items, cfg.batch_size):
            lacking = [it for it in chunk if (it["id"], name, prints.get(name)) not in have]
            out += [(name, it) for it in (chunk if whole_chunks and lacking else lacking)]
    return out


def complete_all(run: Run, session, cm, adapters: dict[str, Path], items: list[dict], cfg: CompareConfig, key: str,
                 dups: dict, progress: Progress, per_sample: bool, started: Callable[[], None] = lambda: None) -> int:
    """Generate every missing completion through the engine's session (base and adapters answer an instruction with
    the same seed; a chunk's answers share one batch), appending each batch as the engine hands it over
    (`started()` is called just before each append: lab.store.once records the settings with the first).
    Returns records written."""
    prints = {name: fingerprint(path) for name, path in adapters.items()}
    todo = missing_units(run, adapters, items, cfg, key, whole_chunks=not per_sample)
    encoded = {it["id"]: cm.encode_prompt(it["prompt"]) for _, it in todo}
    where = {it["id"]: n for n, it in enumerate(items)}
    units = [Unit(it["id"], [0], it["id"], None if name == BASE else name, where[it["id"]] // cfg.batch_size,
                  salt=lambda _idx, p=it["prompt"]: p[:64]) for name, it in todo]
    total, written = (1 + len(adapters)) * len(items), [0]

    def take(u: Unit, comps: list[Completion]) -> None:
        name, it = u.adapter or BASE, items[where[u.key]]
        started()
        written[0] += run.append("compare", [compare_record(it, c, name, adapters.get(name), cm.path, cfg, key,
                                                            dups.get(it["id"]), prints.get(name)) for c in comps])

    session.units(units, encoded, cfg.decoding(), cfg.batch_size,
                  ShiftedProgress(progress, total - len(todo), total, "comparing"), take)
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
    name = pick_engine(cfg.engine, precision.probe(cfg.device).kind)
    engine = ENGINES[name]
    progress = progress or Progress("comparing")
    progress.loading(f"model {cfg.model}")
    cm = engine.load(cfg.model, cfg.device, cfg.dtype)
    check_same_base(adapters, cfg.model, cm.path)
    key = model_key(cfg, name)
    settings = {**cfg.to_dict(), "key": key, "base_path": cm.path, "models": [BASE, *adapters],
                "instruction_ids": [i["id"] for i in items], "duplicates_found": dups, **engine_record(name),
                "checked_ids": [i["id"] for i in items if checks.has_checks(i)],
                "adapter_paths": {name: str(path) for name, path in adapters.items()}}
    started = once(lambda: run.record_stage("compare", settings))  # with the first completion, or once scored
    with engine.session(cm, adapters) as session:
        written = complete_all(run, session, cm, adapters, items, cfg, key, dups, progress, session.per_sample,
                               started)
    progress.close()
    scores = score(run, cfg, progress, api_key, settings)
    started()
    return {"run": run.name, "models": [BASE, *adapters], "instructions": len(items), "written_now": written,
            "duplicates": len(dups), "scores": str(run.file("compare_scores")), "win_rates": scores["win_rates"],
            "head_to_head": scores["head_to_head"],
            **({"checks": {k: scores["checks"][k] for k in ("n", "per_model", "vs_base")}} if "checks" in scores
               else {})}


# ---- the grid ----------------------------------------------------------------------------------------------------
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
        atomic_write_text(path, cards.markdown_table(df))
    else:
        raise LabError(f"Unknown export format {fmt!r}: use csv, jsonl or md.")
    return path


# ---- the user's notes ----------------------------------------------------------------------------------------------
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


def run(run: Run, cfg: CompareConfig, progress: Progress | None = None) -> dict:
    """The compare stage as the CLI and the app's jobs run it: compare, then write the grid's exports (--export)."""
    summary = compare_run(run, cfg, progress)
    return {**summary, "exports": [str(export(run, f.strip())) for f in cfg.export.split(",") if f.strip()]}
