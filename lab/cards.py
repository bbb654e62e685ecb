"""Data set and model cards for the Hub, written from the run's own files (run.json and the record files).

A card says how its data or adapter was made, so that someone who finds it on the Hub can judge it and redo it:
the model and decoding behind the responses, the instructions, the judge and its prompt (hash and text), the call
plan, PairRM, the pair strategy, statistics; for an adapter the base model, the data set, every training parameter,
the final metrics and how to load it. Cards are built from facts only: a setting the run never recorded is left out,
never guessed. run.json is already free of secrets (lab.store.scrub).

Text from the run (a judge prompt, a model name, a setting) never becomes markup: table cells are HTML-escaped,
code blocks are fenced with more backticks than any run of backticks or tildes inside (`fence`), inline code the
same way (`code`).
"""
from __future__ import annotations

import copy
import html
import json
import re
from collections import Counter
from pathlib import Path
from statistics import mean

from lab import efficiency, noise
from lab.adapters import read_metrics, read_state
from lab.methods import METHODS
from lab.models import BUNDLED_HUB_ID, CHAT_TEMPLATE_KWARGS, HUB_ID
from lab.records.verdicts import report_records
from lab.score import PROMPT_HASH, SCORE_PROMPT
from lab.store import Run, adapter_file

LONG = 120  # settings longer than this (prompt texts) are shown in a code block, not squeezed into a table cell


# ---- small markdown helpers ---------------------------------------------------------------------------------------
def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested settings as table rows."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(v, newline: str = " ") -> str:
    """One table cell: HTML escaped (a cell holding <img onerror=...> shows as text), backslashes and pipes escaped,
    one line (a line break becomes `newline`)."""
    if isinstance(v, float) and not v.is_integer():
        v = float(f"{v:.6g}")  # 0.6931471824645996 -> 0.693147: metrics to the digits that mean something
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    return text.replace("\n", newline)


def cell(v, newline: str = " ") -> str:
    """A table cell for any Markdown table the lab writes (cards, the report, the comparison grid): escaped, one
    line; the grid keeps a long answer's lines apart with newline="<br>"."""
    return _cell(v, newline)


def markdown_table(df) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs `tabulate`, which the project does not ship)."""
    def one(v) -> str:  # markup in an instruction or an answer shows as text (cell)
        return "" if v is None or v != v else cell(str(v), newline="<br>")  # v != v: NaN

    cols = [df.index.name or "", *map(str, df.columns)]
    rows = [[one(ix), *(one(v) for v in row)] for ix, row in zip(df.index, df.itertuples(index=False))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fence(text: str, info: str = "text") -> str:
    """A fenced code block holding `text` whole: its fence is longer than any run of backticks or tildes inside
    (at least 3), so a text holding ``` can neither close the block early nor open one of its own."""
    longest = max((len(m) for m in re.findall(r"`+|~+", text)), default=0)
    bar = "`" * max(3, longest + 1)
    return f"{bar}{info}\n{text}\n{bar}"


def code(text: str) -> str:
    """Inline code holding `text` as is: delimited by more backticks than any run inside (CommonMark code span)."""
    text = str(text).replace("\n", " ")
    bar = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{bar}{pad}{text}{pad}{bar}"


def table(rows: dict, head: tuple[str, str] = ("setting", "value")) -> str:
    """A two-column markdown table; long text values are left to `long_texts`."""
    body = [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows.items() if not _is_long(v)]
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|", *body]) if body else "_(none recorded)_"


def _is_long(v) -> bool:
    return isinstance(v, str) and (len(v) > LONG or "\n" in v)


def long_texts(rows: dict) -> str:
    """Each long text setting (a judge prompt, say) in its own fenced block, whole."""
    return "\n\n".join(f"{code(k)}:\n\n{fence(v)}" for k, v in rows.items() if _is_long(v))


def _counts(records: list[dict], key: str) -> dict:
    return dict(Counter(str(r.get(key)) for r in records).most_common())


def _front_matter(data) -> str:
    return f"---\n{data.to_yaml()}\n---\n"


def _iteration(run: Run) -> int | None:
    return int(run.path.name) if run.path.parent.name == "iterations" and run.path.name.isdigit() else None


def _root(run: Run) -> Run:
    """The run an iteration round belongs to (run.json and iterate.jsonl live there). A copy of the same kind of
    Run, so that a view of the run (lab.hub.PublicRun) stays one."""
    if not _iteration(run):
        return run
    root = copy.copy(run)
    root.path = run.path.parent.parent
    return root


def _where(run: Run) -> str:
    k = _iteration(run)
    return f"run {code(_root(run).name)}, self-rewarding round {k}" if k else f"run {code(run.name)}"


# ---- data set card ------------------------------------------------------------------------------------------------
CONFIG_TEXT = {
    "default": "the preference pairs, TRL conversational format: prompt / chosen / rejected, meta says where each "
               "came from (load with `split=\"train\"`)",
    "samples": "every sampled response: instruction, text, model, decoding, token counts, finish reason",
    "judgments": "one row per judge call: the pair, the order shown, verdict, the judge's reasoning and raw text",
    "rankings": "scores and ranks per instruction: PairRM's, or a reward model's rewards (\"kind\")",
    "spotcheck": "human verdicts on judged pairs (the last per pair counts)",
    "scores": "self-rewarding round: every answer scored with the additive 5-point prompt, R times",
}


def dataset_card(repo_id: str, source: str, run: Run, pairs: list[dict], raw: dict[str, list[dict]],
                 rows: dict[str, int]) -> str:
    """The README.md of a pushed preference data set. `raw` maps record kind -> records, `rows` config -> rows."""
    from huggingface_hub import DatasetCardData

    configs = [{"config_name": c, "data_files": [{"split": "train", "path": f"{'data' if c == 'default' else c}/*"}]}
               for c in rows]
    data = DatasetCardData(configs=configs, task_categories=["text-generation"], language=["en"],
                           tags=["dpo", "preference", "synthetic", "preference-lab"], pretty_name=repo_id.split("/")[1],
                           size_categories=[_size_category(len(pairs))])
    parts = [_front_matter(data), f"# {repo_id}\n", _dataset_intro(source, run, raw),
             _noise_section(noise.notes(run, "pairs", {"source": source})),
             _load_snippet(repo_id, rows), _configs_section(rows), "## How it was made\n",
             _model_section(run, raw["samples"]), _template_section(), _instructions_section(run, raw["samples"]),
             _judge_section(run, raw["judgments"], raw["samples"]), _scores_section(raw.get("scores") or []),
             _round_section(run),
             _rank_section(run, raw["rankings"]),
             _pairs_section(run, source, pairs), _stats_section(pairs, raw), _efficiency_section(run),
             _all_settings(run)]
    return "\n".join(p for p in parts if p)


def _noise_section(labels: list[str]) -> str:
    """The noise labels (lab.noise) right under the title, where nobody misses them."""
    return noise.markdown(labels) + "\n" if labels else ""


def _efficiency_section(run: Run, running: bool = False) -> str:
    """What each stage of the run cost (lab.efficiency records)."""
    records = efficiency.read(run, running)
    return f"### Efficiency\n\nOne row per run of a stage (efficiency.jsonl):\n\n{efficiency.markdown(records)}" \
        if records else ""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def _dataset_intro(source: str, run: Run, raw: dict) -> str:
    models = sorted({s.get("model", "?") for s in raw["samples"]}) or ["(no samples file)"]
    return (f"Preference pairs for DPO built by Preference Lab ({_where(run)}) from responses of "
            f"{', '.join(code(m) for m in models)}; pairs chosen by **{_cell(source)}**. Generated text: check it "
            "before training on it, and follow the terms of the model that wrote it.\n")


def _load_snippet(repo_id: str, rows: dict) -> str:
    extra = "".join(f'{c} = load_dataset("{repo_id}", "{c}", split="train")\n' for c in rows if c != "default")
    return ("## Load it\n\n```python\nfrom datasets import load_dataset\n\n"
            f'pairs = load_dataset("{repo_id}", split="train")\n{extra}```\n')


def _configs_section(rows: dict) -> str:
    lines = [f"| `{c}` | {n} | {CONFIG_TEXT.get(c, '')} |" for c, n in rows.items()]
    return "## Configurations\n\n| config | rows | contents |\n|---|---|---|\n" + "\n".join(lines) + "\n"


def _model_section(run: Run, samples: list[dict]) -> str:
    sample = run.stage_settings("sample") or {}
    combos = Counter(json.dumps({"model": s.get("model"), "model_path": s.get("model_path"),
                                 **(s.get("decoding") or {})}, sort_keys=True) for s in samples)
    lines = [f"| {_cell(json.loads(c))} | {n} |" for c, n in combos.most_common()]
    used = ("Responses by model and decoding (from samples.jsonl):\n\n| model and decoding | responses |\n|---|---|\n"
            + "\n".join(lines) + "\n") if lines else ""
    info = {k: sample[k] for k in ("model", "model_path", "k", "temperature", "top_p", "max_new_tokens", "seed",
                                   "dtype", "batch_size") if k in sample}
    info.update(flatten(sample.get("model_info") or {}, "model_info."))
    return f"### Model and decoding\n\n{used}\nSampling settings (run.json):\n\n{table(info)}\n"


def _template_section() -> str:
    """The chat template arguments the answers were written under: the pairs are conversational, and whoever renders
    them for training should render the prompts as sampling did (a Llama-3.2 template prints the date it is given)."""
    args = json.dumps(CHAT_TEMPLATE_KWARGS)
    return ("### Chat template arguments\n\nThe answers were written to prompts rendered by the sampling model's own chat "
            f"template with the template arguments `{args}`; the lab's judges, rankers and training rendered them "
            "the same way. Render these conversations with the same arguments when you train on them: TRL reads a "
            f"row's `chat_template_kwargs` (`pairs = pairs.map(lambda r: {{\"chat_template_kwargs\": {args}}})`), and "
            f"`tokenizer.apply_chat_template(messages, **{args})` does the same by hand.\n")


def _instructions_section(run: Run, samples: list[dict]) -> str:
    items = run.read("instructions")
    sample = run.stage_settings("sample") or {}
    rows = {"instruction source": sample.get("instructions", "?"), "instructions": len(items),
            "instructions with responses": len({s["instruction_id"] for s in samples}),
            "responses per instruction (k)": sample.get("k", "?")}
    by_source = table(_counts(items, "source"), ("source", "instructions")) if items else ""
    return f"### Instructions\n\n{table(rows)}\n\n{by_source}\n"


def _judge_section(run: Run, judgments: list[dict], samples: list[dict]) -> str:
    settings = flatten(run.stage_settings("judge") or {})
    if not judgments and not settings:
        return ""
    hashes = _counts(judgments, "prompt_hash")
    template = run.file("judge_prompt")
    body = [table(settings), long_texts(settings),
            f"Judge prompt template (judge-prompt.txt):\n\n{fence(template.read_text(encoding='utf-8'))}"
            if template.exists() else "",
            "Judge prompt hashes (calls per hash):\n\n" + table(hashes, ("prompt_hash", "calls")) if hashes else "",
            "#### Call plan\n\n" + table(flatten(call_plan(judgments, samples)), ("", "")) if judgments else ""]
    return "### Judge\n\n" + "\n\n".join(b for b in body if b) + "\n"


def call_plan(judgments: list[dict], samples: list[dict]) -> dict:
    """How the judge was called and how it behaved: lab.judge's report (consistency across the two orders,
    position and length bias, verdicts, tokens, cost) plus the orders shown and the backends used."""
    return {"backend / model": _counts([{"m": f"{j.get('backend')} / {j.get('model')}"} for j in judgments], "m"),
            "orders shown": _counts(judgments, "order"), **report_records(judgments, samples)}


def _scores_section(scores: list[dict]) -> str:
    """Self-rewarding rounds: how the model scored its own answers (lab.iterate's scores.jsonl)."""
    if not scores:
        return ""
    values = [x["score"] for x in scores if isinstance(x.get("score"), (int, float))]
    hashes = _counts(scores, "prompt_hash")
    rows = {"evaluations": len(scores), "scored": len(values),
            "mean score": round(mean(values), 3) if values else "n/a",
            "read by": _counts(scores, "method"), "judge": _counts(scores, "judge"), "prompt hashes": hashes}
    prompt = f"\n\nScoring prompt (hash `{PROMPT_HASH}`):\n\n{fence(SCORE_PROMPT)}" \
        if PROMPT_HASH in hashes else ""
    return f"### Self-rewarding scores\n\n{table(rows, ('', ''))}{prompt}\n"


def _round_section(run: Run) -> str:
    """The round's line of iterate.jsonl: its lineage (policy, reference, adapter) and statistics."""
    k = _iteration(run)
    lines = [r for r in _root(run).read("iterate") if r.get("round") == k] if k else []
    return f"### Round {k}\n\n{table(flatten(lines[-1]), ('', ''))}\n" if lines else ""


def _rank_section(run: Run, rankings: list[dict]) -> str:
    settings = flatten(run.stage_settings("rank") or {})
    if not rankings and not settings:
        return ""
    shown = table(settings) + "\n\n" if settings else ""
    kinds = Counter(r.get("kind", "pairrm") for r in rankings)
    by_kind = ", ".join(f"{n} by {k}" for k, n in sorted(kinds.items()))
    return f"### Ranking (PairRM or reward model)\n\n{shown}Rankings: {len(rankings)}" + \
        (f" ({by_kind})\n" if by_kind else "\n")


def _pairs_section(run: Run, source: str, pairs: list[dict]) -> str:
    settings = flatten(run.stage_settings(f"pairs-{source}") or run.stage_settings("pairs") or {})
    metas = [p.get("meta") or {} for p in pairs]
    return (f"### Pair strategy\n\nSource: {code(source)}.\n\n{table(settings)}\n\n{long_texts(settings)}\n"
            + (table(_counts(metas, "source"), ("meta.source", "pairs")) + "\n" if metas else ""))


def _text(messages) -> str:
    return " ".join(m.get("content", "") for m in messages) if isinstance(messages, list) else str(messages or "")


def pair_stats(pairs: list[dict]) -> dict:
    """Counts and the length gap (judges and reward models favour longer answers; DPO then learns length)."""
    chosen = [len(_text(p.get("chosen"))) for p in pairs]
    rejected = [len(_text(p.get("rejected"))) for p in pairs]
    ids = {(p.get("meta") or {}).get("instruction_id") for p in pairs}
    return {"pairs": len(pairs), "instructions": len(ids),
            "mean characters, chosen": round(mean(chosen), 1) if chosen else 0,
            "mean characters, rejected": round(mean(rejected), 1) if rejected else 0,
            "chosen is the longer answer": f"{sum(c > r for c, r in zip(chosen, rejected))}/{len(pairs)}"}


def _stats_section(pairs: list[dict], raw: dict) -> str:
    samples = raw["samples"]
    rows = pair_stats(pairs)
    if samples:
        rows.update({"responses": len(samples), "finish reasons": _counts(samples, "finish_reason"),
                     "duplicate responses": sum(s.get("duplicate_of") is not None for s in samples),
                     "mean completion tokens": round(mean(s.get("completion_tokens") or 0 for s in samples), 1)})
    rows.update(spotcheck_stats(raw["spotcheck"]))
    return f"### Statistics\n\n{table(rows, ('', ''))}\n"


def spotcheck_stats(records: list[dict]) -> dict:
    """Agreement of the human spot-check with the judge (last verdict per pair wins; skips left out)."""
    latest = {(r.get("instruction_id"), r.get("a"), r.get("b")): r for r in records}
    rated = [r for r in latest.values() if r.get("human") != "skip"]
    if not rated:
        return {}
    agree = sum(r.get("human") == r.get("judge") for r in rated)
    return {"pairs spot-checked by a person": len(rated), "person agrees with the judge": f"{agree}/{len(rated)}"}


def _all_settings(run: Run) -> str:
    settings = _root(run).settings()
    if _iteration(run) and run.file("run").exists():
        settings = {**settings, "this round": run.settings()}
    return ("### Every setting (run.json)\n\nThe resolved settings of every stage, as the run recorded them "
            f"(no secrets are ever recorded):\n\n{fence(json.dumps(settings, indent=2, ensure_ascii=False), 'json')}\n")


# ---- model card ---------------------------------------------------------------------------------------------------
def training_state(src: Path, run: Run) -> dict:
    """lab.train's training.json of the adapter (format documented there); run.json's train settings if it has none."""
    return read_state(src) or {"settings": dict(run.stage_settings("train") or {})}


def base_model_id(state: dict, run: Run) -> str | None:
    """The Hub id of the base model, when there is one: a hub id as given, or the bundled model's local copy."""
    samples = run.read("samples")[:1]
    specs = [state.get("base_model"), state.get("base_model_path"), (state.get("settings") or {}).get("model")]
    specs += [s.get("model") for s in samples if s.get("model_path") == state.get("base_model_path")]
    for spec in specs:
        if spec == "bundled":
            return BUNDLED_HUB_ID
        if spec and HUB_ID.match(spec) and not Path(spec).exists():
            return spec
    return None


def trained_on(state: dict, run: Run, links: dict[tuple[Path, str], str]) -> str | None:
    """The data set repo an adapter was trained on: the pairs file training.json names, if it was pushed too."""
    path = str((state.get("pairs") or {}).get("path") or "")
    for (run_path, src), repo in links.items():
        if path and Path(path).resolve() == run_path / f"pairs-{src}.jsonl":
            return repo
    return None


def final_metrics(src: Path, state: dict) -> dict:
    """training.json's final metrics, else the last logged value of every metric in metrics.jsonl."""
    if state.get("final"):
        return dict(state["final"])
    last: dict = {}
    for line in read_metrics(src):
        last.update({k: v for k, v in line.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return last


def model_card(repo_id: str, adapter: str, run: Run, src: Path, state: dict, dataset_id: str | None = None) -> str:
    """The README.md of an adapter: in its folder (lab.train writes it, repo_id = the adapter's name) and on the Hub
    (lab.hub stages it, repo_id = namespace/name). `src`: the folder holding its adapter_config.json; `state`: its
    training.json; dataset_id: the pushed data set it was trained on, where there is one."""
    from huggingface_hub import ModelCardData

    config = json.loads(adapter_file(src, "config").read_text(encoding="utf-8"))
    base_id = base_model_id(state, run)
    method = state.get("method") or "dpo"
    data = ModelCardData(base_model=base_id, datasets=[dataset_id] if dataset_id else None, library_name="peft",
                         pipeline_tag="text-generation", tags=[method, "lora", "peft", "trl", "preference-lab"])
    settings = flatten(state.get("settings") or {})
    labels = noise.notes(run, "train", {**(state.get("settings") or {}), "model": state.get("base_model", "")})
    parts = [_front_matter(data), f"# {repo_id}\n", _noise_section(labels),
             _model_intro(adapter, run, config, state, base_id, dataset_id),
             _howto(repo_id, base_id, (src / "tokenizer_config.json").exists()),  # transformers' name
             "## Training parameters\n\n" + table(settings) + "\n", long_texts(settings),
             "### LoRA (adapter_config.json)\n\n" + table(_lora(config)) + "\n",
             "## Final metrics\n\n" + table(final_metrics(src, state), ("metric", "value")) + "\n",
             _evaluation_section(run, adapter), _warnings(state), _efficiency_section(run, running=True),
             "## Versions\n\n" + table(state["versions"], ("package", "version")) + "\n"
             if state.get("versions") else ""]
    return "\n".join(p for p in parts if p)


def _model_intro(adapter: str, run: Run, config: dict, state: dict, base_id: str | None,
                 dataset_id: str | None) -> str:
    base = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else \
        f"a local model ({code(config.get('base_model_name_or_path'))}), not on the Hub: load it from your own copy"
    data = f"[`{dataset_id}`](https://huggingface.co/datasets/{dataset_id})" if dataset_id else \
        "the run's preference pairs (not pushed with this adapter)"
    pairs = {f"pairs.{k}": v for k, v in (state.get("pairs") or {}).items() if k != "path"}
    label = METHODS.get(state.get("method") or "dpo", METHODS["dpo"]).label
    lines = [f"A LoRA adapter trained by Preference Lab with {label} and PEFT: adapter `{adapter}` of "
             f"{_where(run)}.\n", f"- Base model: {base}", f"- Training data: {data}"]
    if state.get("init_adapter"):
        lines.append(f"- Continued from adapter {code(state['init_adapter'])} (the previous self-rewarding round)")
    if state.get("status") and state["status"] != "done":
        lines.append(f"- Status: **{state['status']}** (stopped early) at step {state.get('global_step')} of "
                     f"{state.get('max_steps')}")
    return "\n".join(lines) + "\n\n" + (table(pairs, ("training data", "")) + "\n" if pairs else "")


def _evaluation_section(run: Run, adapter: str) -> str:
    """The run's latest comparison, where it compared this adapter: each win rate against the base with the grader
    that made it (and the circular label where that grader also made the training pairs), and the IFEval checks'
    accuracies with the paired difference against the base."""
    from lab.compare_scorers import read_scores

    scores = read_scores(run) or {}
    wins = (scores.get("win_rates") or {}).get(adapter)
    if not wins:
        return ""
    rows = {f"win rate vs base ({name}, by {w.get('grader', name)})": f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, "
            f"{w['ci_high']:.3f}] (n={w['n']})" + (f": {w['circular']}" if w.get("circular") else "")
            for name, w in wins.items() if w.get("n")}
    found = scores.get("checks") or {}
    for lv, d in ((found.get("vs_base") or {}).get(adapter) or {}).items():
        mine, base = found["per_model"][adapter][lv]["value"], found["per_model"]["base"][lv]["value"]
        rows[f"IFEval {lv.replace('_', ' ')} accuracy, adapter vs base"] = (
            f"{mine:.3f} vs {base:.3f}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']})")
    return ("## Evaluation on held-out instructions\n\nFrom the run's comparison (95% bootstrap intervals over "
            "instructions; IFEval accuracies by its own checkers, no model grading).\n\n" + table(rows, ("", "")) + "\n")


def _warnings(state: dict) -> str:
    found = state.get("warnings") or []
    return "## Warnings from training\n\n" + "\n".join(f"- {_cell(w)}" for w in found) + "\n" if found else ""


def _lora(config: dict) -> dict:
    keys = ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_dora",
            "use_rslora", "modules_to_save")
    return {k: config[k] for k in keys if k in config}


def _howto(repo_id: str, base_id: str | None, has_tokenizer: bool) -> str:
    note = "" if base_id else "# the base is a local model: set base_model_name_or_path in adapter_config.json first\n"
    repo_id = repo_id if "/" in repo_id else f"path/to/{repo_id}"  # a local adapter folder
    tokenizer = repo_id if has_tokenizer else base_id or "PATH/TO/BASE/MODEL"
    return ("## How to load it\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import "
            f"AutoTokenizer\n\n{note}model = AutoPeftModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{tokenizer}\")\n"
            "messages = [{\"role\": \"user\", \"content\": \"Give me three tips for better sleep.\"}]\n"
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)\nprint(tokenizer.decode(model.generate(**inputs, max_new_tokens=200)[0]))\n```\n\n"
            "Or merge it into the base: `model.merge_and_unload().save_pretrained(\"merged\")`.\n")


# ---- merged model card ----------------------------------------------------------------------------------------------
def merged_card(repo_id: str, adapter: str, run: Run, folder: Path, state: dict, record: dict,
                dataset_id: str | None = None) -> str:
    """The README.md of an adapter folded into its base (lab.merge; format of `record`, merge.json, there): a plain
    transformers checkpoint. `state`: the adapter's training.json; dataset_id: the pushed data it was trained on."""
    from huggingface_hub import ModelCardData

    base_id = base_model_id(state, run)
    method = record.get("method") or "dpo"
    data = ModelCardData(base_model=base_id, datasets=[dataset_id] if dataset_id else None,
                         library_name="transformers", pipeline_tag="text-generation",
                         tags=[method, "merge", "lora", "trl", "preference-lab"])
    base = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else \
        f"a local model ({code(record.get('base_model'))})"
    label = METHODS.get(method, METHODS["dpo"]).label
    repo = repo_id if "/" in repo_id else f"path/to/{repo_id}"
    intro = (f"Preference Lab's adapter {code(adapter)} of {_where(run)}, trained with {label}, folded into its base "
             f"model with PEFT's `merge_and_unload`: a plain transformers checkpoint (no PEFT needed to load it).\n\n"
             f"- Base model: {base}\n- Merged in float32, saved as {record.get('dtype')}; "
             f"{record.get('parameters', 0):,} parameters\n")
    howto = ("## How to load it\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
             f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
             f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
             "messages = [{\"role\": \"user\", \"content\": \"Give me three tips for better sleep.\"}]\n"
             "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
             "return_dict=True)\nprint(tokenizer.decode(model.generate(**inputs, max_new_tokens=200)[0]))\n```\n")
    settings = flatten(state.get("settings") or {})
    labels = noise.notes(run, "train", {**(state.get("settings") or {}), "model": state.get("base_model", "")})
    parts = [_front_matter(data), f"# {repo_id}\n", _noise_section(labels), intro, howto,
             "## The merge (merge.json)\n\n" + table(flatten(record)) + "\n",
             "## Training parameters of the adapter\n\n" + table(settings) + "\n", long_texts(settings),
             "## Final metrics of the adapter\n\n" + table(state.get("final") or {}, ("metric", "value")) + "\n",
             _warnings(state), _efficiency_section(run, running=True)]
    return "\n".join(p for p in parts if p)
