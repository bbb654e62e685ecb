"""Base vs adapters on held-out instructions: completions side by side, and numbers that say what changed.

The base model is loaded once; every adapter is loaded onto it with PEFT and switched with `set_adapter` (the base's
own answers come from inside `disable_adapter()`), so memory holds one model plus a few LoRA matrices, not N models.
Every model answers the same instructions in the same batches with the same seeds (lab.sample.generate seeds each
batch from the seed and the prompts it holds), so differences come from the weights, not from the dice.

compare.jsonl, one line per (instruction, model) completion:

    {"instruction_id": str, "prompt": str, "model": "base" | adapter name, "adapter_path": str | null,
     "text": str, "prompt_tokens": int, "completion_tokens": int, "finish_reason": "stop" | "length",
     "base_model": spec, "base_path": str, "decoding": {"temperature", "top_p", "max_new_tokens", "seed"},
     "key": str,                               # hash of base + decoding: records of other settings are history
     "adapter_hash": str | null,               # hash of the adapter's files (a retrained adapter is redone)
     "duplicate": null | {"of": training instruction id, "kind": "exact" | "near", "similarity": float}}

compare-scores.json (whole file, rewritten by `score`):

    {"key", "models": [names], "n_instructions", "flagged": [ids kept though they duplicate training ones],
     "confidence", "bootstrap",
     "per_model": {name: {"mean_chars", "mean_tokens", "chars_change", "chars_change_pct", "truncated_rate",
                          "distinct_1", "distinct_2", "refusal_rate"}},
     "win_rates": {adapter: {"pairrm" | "judge": {"win_rate", "ci_low", "ci_high", "n", "wins", "ties", "losses",
                                                  ...}}}}

Win rates count a win as 1, a tie as 0.5 and a loss as 0, per instruction; the interval is a percentile bootstrap
over instructions. notes.json holds the user's own notes: {"overall": str, "instructions": {id: str}, "updated"}.
The module writes no prose about the results: the numbers, the grid and the user's notes are the analysis.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import unicodedata
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable

from lab.errors import LabError
from lab.progress import Progress
from lab.store import Run, atomic_write_json, once, write_jsonl

BASE = "base"
SHINGLE = 5  # character n-grams for near-duplicate detection: robust to small rewordings and typos
REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i am sorry,? but|i can(?:'|no)t (?:help|assist|provide|do|answer|comply|fulfil)|"
    r"i (?:am|'m) (?:not able|unable) to|i won'?t be able to|as an ai\b|as a language model|i must decline|"
    r"i cannot (?:help|assist|provide|comply)|i can'?t (?:help|assist|provide|comply))",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 300  # a refusal shows in the opening of an answer; later "I can't stress enough" is not one


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
    for path in sorted(run.path.glob("pairs-*.jsonl")) + sorted(run.path.glob("iterations/*/pairs-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                pair = json.loads(line)
                meta = pair.get("meta", {})
                out.setdefault(meta.get("instruction_id") or str(len(out)), pair["prompt"][-1]["content"])
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


def heldout_instructions(run: Run, cfg) -> tuple[list[dict], dict[str, dict]]:
    """The instructions to compare on, after the duplicate policy: (instructions, duplicates found)."""
    from lab.instructions import load_instructions

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


# ---- models: one base, adapters switched on it ------------------------------------------------------------------
def resolve_adapters(run: Run, names: str) -> dict[str, Path]:
    """'' -> every complete adapter of the run; else a comma list of adapter names (or adapter folders)."""
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    if not wanted:
        wanted = run.adapters()
        if not wanted:
            raise LabError(f"Run {run.name} has no adapters yet: train one first (`python -m lab train --run "
                           f"{run.name} ...`), then compare.")
    out = {}
    for name in wanted:
        path = Path(name).expanduser() if "/" in name else run.adapter_dir(name)
        if not (path / "adapter_config.json").exists():
            have = ", ".join(run.adapters()) or "none yet"
            raise LabError(f"No adapter {name!r} in run {run.name} (adapters: {have}). Pick names from that list.")
        out[path.name if "/" in name else name] = path
    if BASE in out:
        raise LabError(f"An adapter may not be called {BASE!r}: that column is the base model. Rename the adapter.")
    return out


def adapter_base(path: Path) -> str:
    """The base model an adapter was trained on, as its adapter_config.json records it."""
    return json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path") or ""


def check_same_base(adapters: dict[str, Path], spec: str, base_path: str) -> None:
    """Refuse an adapter trained on another base: its LoRA matrices would fit nothing, or fit and mean nothing."""
    ok = {spec, base_path, Path(base_path).name, spec.rstrip("/").split("/")[-1]}
    for name, path in adapters.items():
        trained = adapter_base(path)
        if trained and trained not in ok and Path(trained).name not in ok:
            raise LabError(f"Adapter {name!r} was trained on {trained}, but the comparison's base model is {spec} "
                           f"({base_path}). Pass --model {trained} or pick adapters trained on {spec}.")


def attach_adapters(model, adapters: dict[str, Path]):
    """Wrap `model` in one PeftModel holding every adapter; returns (peft model, {name: internal adapter name})."""
    from peft import PeftModel

    slots = {name: f"lab_adapter_{i}" for i, name in enumerate(adapters)}  # run names may hold '.', PEFT keys may not
    peft = None
    for name, path in adapters.items():
        try:
            if peft is None:
                peft = PeftModel.from_pretrained(model, str(path), adapter_name=slots[name])
            else:
                peft.load_adapter(str(path), adapter_name=slots[name])
        except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, unknown target modules
            if peft is not None:
                peft.unload()
            raise LabError(f"Adapter {name!r} does not fit this base model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}): it was trained on another model.") from e
    return peft, slots


@contextmanager
def adapters_on(cm, adapters: dict[str, Path]):
    """Load every adapter onto the loaded base `cm` once; yields `select(name)`, a context manager that gives a
    ChatModel with that adapter switched on (name None: the plain base, every adapter disabled). On exit the LoRA
    layers are stripped again, so the cached base model stays a plain base model."""
    if not adapters:
        yield lambda name: nullcontext(cm)
        return
    peft, slots = attach_adapters(cm.model, adapters)
    wrapped = dataclasses.replace(cm, model=peft)

    @contextmanager
    def select(name: str | None):
        if name is None:
            with peft.disable_adapter():
                yield wrapped
        else:
            peft.set_adapter(slots[name])
            yield wrapped

    try:
        yield select
    finally:
        peft.unload()


def fingerprint(path: Path | None) -> str | None:
    """Hash of an adapter's files: a retrained adapter under the same name is generated again, not reused."""
    if path is None:
        return None
    h = hashlib.sha1()
    for f in sorted(path.glob("adapter_*")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def model_settings(cfg) -> tuple[str, dict]:
    """(key, decoding) of a comparison: records with another key were made with other settings."""
    dec = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    raw = json.dumps({"model": cfg.model, "decoding": dec, "batch_size": cfg.batch_size}, sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:10], dec


def base_spec(run: Run, cfg) -> str:
    """--model, else the model this run sampled with."""
    if cfg.model:
        return cfg.model
    sampled = (run.stage_settings("sample") or {}).get("model")
    if not sampled:
        raise LabError(f"Run {run.name} records no sampled model: pass --model (the base the adapters were "
                       "trained on).")
    return sampled


# ---- generation ----------------------------------------------------------------------------------------------------
def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _records(chunk: list[dict], comps, name: str, path: Path | None, cm, cfg, key: str, dec: dict,
             dups: dict[str, dict]) -> list[dict]:
    return [{"instruction_id": it["id"], "prompt": it["prompt"], "model": name,
             "adapter_path": str(path) if path else None, "text": c[0].text, "prompt_tokens": c[0].prompt_tokens,
             "completion_tokens": c[0].completion_tokens, "finish_reason": c[0].finish_reason,
             "base_model": cfg.model, "base_path": cm.path, "decoding": dec, "key": key,
             "duplicate": dups.get(it["id"])} for it, c in zip(chunk, comps)]


def complete_all(run: Run, select, adapters: dict[str, Path], items: list[dict], cfg, key: str, dec: dict,
                 dups: dict, progress: Progress, started=lambda: None) -> int:
    """Generate every missing (model, chunk) unit, appending each chunk as it finishes (`started()` is called just
    before each append: lab.store.once records the settings with the first). Returns records written."""
    from lab.sample import Decoding, generate

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
        with select(None if name == BASE else name) as cm:
            comps = generate(cm, [it["prompt"] for it in chunk], 1, Decoding(**dec), cfg.batch_size)
        recs = _records(chunk, comps, name, adapters.get(name), cm, cfg, key, dec, dups)
        started()
        written += run.append("compare", [{**r, "adapter_hash": prints.get(name)} for r in recs])
        done += len(chunk)
    progress.update(done, total, "comparing")
    return written


def check_scorers(cfg, api_key: str | None) -> None:
    """Fail before any generation if a judge cannot run: no API key (lab.judge_backends.resolve_key: the same rule
    the judge applies), or a PairRM that cannot be found."""
    from lab.judge_backends import KEY_ENV, resolve_key

    if cfg.judge in KEY_ENV:
        try:
            resolve_key(cfg.judge, "", api_key)
        except LabError as e:
            raise LabError(f"--judge {cfg.judge} needs an API key: {e} Or use --judge local (offline, weak) or "
                           "--judge none.") from None
    if cfg.pairrm:
        from lab.rank import resolve_ranker

        resolve_ranker(cfg.pairrm)


def compare_run(run: Run, cfg, progress: Progress | None = None, api_key: str | None = None) -> dict:
    """The compare stage: completions of base and adapters on held-out instructions, then the scores.
    Resumes: (model, chunk) units already in compare.jsonl with the same settings are not generated again.
    api_key: the API judge's key, passed in memory by the app (else the judge reads it from the environment).
    Holds the run's "compare" lock: a second comparison of the run is refused."""
    with run.lock("compare"):
        return _compare_locked(run, cfg, progress, api_key)


def _compare_locked(run: Run, cfg, progress: Progress | None, api_key: str | None) -> dict:
    from lab import models

    cfg = dataclasses.replace(cfg, model=base_spec(run, cfg)).validate()
    adapters = resolve_adapters(run, cfg.adapters)
    items, dups = heldout_instructions(run, cfg)
    check_scorers(cfg, api_key)
    cm = models.load(cfg.model, cfg.device, cfg.dtype)
    check_same_base(adapters, cfg.model, cm.path)
    key, dec = model_settings(cfg)
    settings = {**cfg.to_dict(), "key": key, "base_path": cm.path, "models": [BASE, *adapters],
                "instruction_ids": [i["id"] for i in items], "duplicates_found": dups}
    started = once(lambda: run.record_stage("compare", settings))  # with the first completion, or once scored
    progress = progress or Progress("comparing")
    with adapters_on(cm, adapters) as select:
        written = complete_all(run, select, adapters, items, cfg, key, dec, dups, progress, started)
    progress.close()
    scores = score(run, cfg, progress, api_key, settings)
    started()
    return {"run": run.name, "models": [BASE, *adapters], "instructions": len(items), "written_now": written,
            "duplicates": len(dups), "scores": str(run.file("compare_scores")), "win_rates": scores["win_rates"]}


# ---- the grid ----------------------------------------------------------------------------------------------------
def current(run: Run, st: dict | None = None) -> tuple[list[dict], dict]:
    """Records of a comparison (its key, its instructions, its models) and its settings: those given (a comparison
    not recorded yet), else the latest in run.json."""
    st = st or run.stage_settings("compare")
    if not st:
        raise LabError(f"Run {run.name} has no comparison yet: run `python -m lab compare --run {run.name}` first.")
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
    def cell(v) -> str:
        text = "" if v is None or v != v else str(v)  # v != v: NaN
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    cols = [df.index.name or "", *map(str, df.columns)]
    rows = [[cell(ix), *(cell(v) for v in row)] for ix, row in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def export(run: Run, fmt: str) -> Path:
    """Write the grid as csv, jsonl or md into the run; returns the file's path."""
    from lab.store import atomic_write_text

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


def bootstrap_ci(values: list[float], resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling items with replacement)."""
    import numpy as np

    if not values:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def win_rate(outcomes: list[float], cfg) -> dict:
    """outcomes per instruction: 1 adapter wins, 0.5 tie, 0 base wins -> rate, bootstrap interval and counts."""
    lo, hi = bootstrap_ci(outcomes, cfg.bootstrap, cfg.confidence, cfg.seed)
    return {"win_rate": sum(outcomes) / len(outcomes) if outcomes else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": len(outcomes), "wins": outcomes.count(1.0), "ties": outcomes.count(0.5),
            "losses": outcomes.count(0.0)}


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


def score(run: Run, cfg, progress: Progress | None = None, api_key: str | None = None,
          settings: dict | None = None) -> dict:
    """Compute every score of a comparison (`settings` as compare_run records them; default: the latest in
    run.json) and write compare-scores.json. Win rates need the judges: PairRM when cfg.pairrm is set, the LLM
    judge when cfg.judge is not 'none'."""
    records, st = current(run, settings)
    table = by_model(records)
    flagged = sorted(i for i in st.get("duplicates_found", {}) if i in set(st["instruction_ids"]))
    base = list(table.get(BASE, {}).values())
    base_chars = text_stats(base, None)["mean_chars"] if base else None
    per_model = {m: text_stats(list(table.get(m, {}).values()), None if m == BASE else base_chars)
                 for m in st["models"]}
    wins = {m: {} for m in st["models"] if m != BASE}
    for judge_name, outcomes in judge_outcomes(run, cfg, table, st, progress, api_key).items():
        for m, values in outcomes.items():
            wins[m][judge_name] = win_rate(values, cfg)
    scores = {"key": st["key"], "models": st["models"], "n_instructions": len(st["instruction_ids"]),
              "flagged": flagged, "confidence": cfg.confidence, "bootstrap": cfg.bootstrap,
              "per_model": per_model, "win_rates": wins, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(run.file("compare_scores"), scores)
    return scores


def judge_outcomes(run: Run, cfg, table: dict, st: dict, progress: Progress | None,
                   api_key: str | None = None) -> dict[str, dict[str, list]]:
    """{"pairrm" | "judge": {adapter: [outcome per instruction]}} for the judges that are switched on."""
    out = {}
    if cfg.pairrm:
        out["pairrm"] = pairrm_outcomes(run, cfg, table, st, progress)
    if cfg.judge and cfg.judge != "none":
        out["judge"] = llm_judge_outcomes(run, cfg, table, st, progress, api_key)
    return out


def scoring_run(run: Run, table: dict, st: dict) -> tuple[Run, dict[int, str]]:
    """The comparison as a nested run that lab.rank and lab.judge read like any other: one instruction per held-out
    instruction, sample 0 the base's completion, sample i the i-th adapter's. One folder per comparison key and
    model list, so sample indices always mean the same models (and the judge's cache still skips repeated calls).
    Returns (nested run, {sample index: model name})."""
    tag = hashlib.sha1(json.dumps([st["key"], st["models"]]).encode()).hexdigest()[:10]
    nested = Run(run.file("compare_scoring") / tag)
    names = dict(enumerate(st["models"]))
    samples = []
    for iid in st["instruction_ids"]:
        seen: dict[str, int] = {}
        for i, m in names.items():
            r = table.get(m, {}).get(iid)
            if r is not None:
                first = seen.setdefault(r["text"], i)
                samples.append({"instruction_id": iid, "sample_index": i, "prompt": r["prompt"], "text": r["text"],
                                "model": m, "model_path": r["adapter_path"] or r["base_path"],
                                "decoding": r["decoding"], "prompt_tokens": r["prompt_tokens"],
                                "completion_tokens": r["completion_tokens"], "finish_reason": r["finish_reason"],
                                "duplicate_of": first if first != i else None})
    write_jsonl(nested.file("samples"), samples)
    return nested, names


def pairrm_outcomes(run: Run, cfg, table: dict, st: dict, progress: Progress | None) -> dict[str, list]:
    """PairRM's both-orders preference of each adapter over the base, per instruction (1 win, 0.5 equal, 0 loss).
    Rankings are lab.rank records in the nested scoring run (a rerun with the same texts ranks nothing again)."""
    from lab import rank
    from lab.config import RankConfig

    nested, names = scoring_run(run, table, st)
    rank.rank_run(nested, RankConfig(ranker=cfg.pairrm, device=cfg.device, dtype=cfg.dtype), progress)
    records = rank.latest_rankings(nested)
    out: dict[str, list] = {}
    for i, m in list(names.items())[1:]:
        prefs = [rank.preference(records[iid], i, 0) for iid in st["instruction_ids"]
                 if iid in records and {0, i} <= set(records[iid]["sample_indices"])]
        out[m] = [1.0 if p > 0 else 0.0 if p < 0 else 0.5 for p in prefs]
    return out


def llm_judge_outcomes(run: Run, cfg, table: dict, st: dict, progress: Progress | None,
                       api_key: str | None = None) -> dict[str, list]:
    """The LLM judge (lab.judge, plan "full": every pair of models judged in both orders) on each adapter against
    the base, per instruction: win 1; tie or the two orders disagreeing 0.5; loss 0; unreadable verdicts left out.
    An adapter whose completion equals the base's ties without a call."""
    from lab.config import JudgeConfig
    from lab.judge import judge_run, pair_verdicts

    nested, names = scoring_run(run, table, st)
    samples = nested.read("samples")
    same = {(s["instruction_id"], s["sample_index"]): s["duplicate_of"] for s in samples}  # the judge skips twins
    if any(d is None and s["sample_index"] > 0 for s, d in zip(samples, same.values())):
        jc = JudgeConfig(backend=cfg.judge, model=cfg.judge_model, plan="full", rpm=cfg.judge_rpm,
                         device=cfg.device, dtype=cfg.dtype)
        judge_run(nested, jc, progress, api_key=api_key)
    verdicts = {(v["instruction_id"], v["a"], v["b"]): v["verdict"] for v in pair_verdicts(nested.read("judgments"))}
    value = {"b": 1.0, "a": 0.0, "tie": 0.5, "inconsistent": 0.5}
    out: dict[str, list] = {}
    for i, m in list(names.items())[1:]:
        got = []
        for iid in st["instruction_ids"]:
            if (iid, i) in same:
                j = same[(iid, i)] if same[(iid, i)] is not None else i  # a twin of another adapter: its verdict
                got.append(0.5 if j == 0 else value.get(verdicts.get((iid, 0, j), "invalid")))
        out[m] = [g for g in got if g is not None]
    return out


# ---- the user's notes ----------------------------------------------------------------------------------------------
def read_notes(run: Run) -> dict:
    """{"overall": str, "instructions": {instruction_id: str}}"""
    path = run.file("notes")
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {"overall": data.get("overall", ""), "instructions": data.get("instructions", {})}


def save_note(run: Run, text: str, instruction_id: str | None = None) -> dict:
    """Set the overall note (instruction_id None) or one instruction's note; an empty text deletes it."""
    notes = read_notes(run)
    if instruction_id is None:
        notes["overall"] = text.strip()
    elif text.strip():
        notes["instructions"][instruction_id] = text.strip()
    else:
        notes["instructions"].pop(instruction_id, None)
    atomic_write_json(run.file("notes"), {**notes, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return notes
