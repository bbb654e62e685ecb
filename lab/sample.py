"""The sample stage: K responses per instruction from a chat model (optionally with a LoRA adapter on), through
lab.generation (batched across instructions and samples; the same seed, batch size and instructions give the same
samples), resuming exactly the samples a run lacks.

samples.jsonl's format, `sample_record` and the reader `groups` are lab/records/samples.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab import efficiency, precision
from lab.adapters import resolve_adapters
from lab.config import Settings, flag, opt
from lab.errors import LabError
from lab.engines import ENGINE_CHOICES, ENGINE_HELP, ENGINES, pick_engine
from lab.generation import Completion, Decoding, ShiftedProgress, Unit, engine_record
from lab.instructions import Instruction, load_instructions
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.records.samples import groups, sample_record
from lab.store import Run, once

MAX_K = 1000  # responses per instruction anyone may ask for (a Space's owner caps it lower: lab/limits.py)
POLICY = "policy"  # the name the sampled-with adapter gets on the loaded base


@dataclass
class SampleConfig(Settings):
    model: str = opt("bundled", "model spec: hub id, local folder, 'bundled' or 'tiny-random'", label="Model")
    instructions: str = opt("bundled", "instruction source: 'lima', 'bundled', 'checks' (the bundled verifiable set: "
                            "IFEval checks), hub:owner/name[:split] (a hub data set, e.g. hub:google/IFEval), a "
                            ".jsonl/.csv/.txt/.parquet/.arrow file or a saved data set folder",
                            label="Instructions")
    instruction_column: str = opt("", "the field or column holding the instruction (empty: prompt, instruction, or "
                                  "LIMA-style conversations, whose first turn is the instruction)",
                                  label="Instruction column")
    n: int = opt(50, "how many instructions to take from the source", label="Instructions (N)")
    k: int = opt(5, "responses per instruction", label="Responses each (K)")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)", label="Temperature")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)",
                       label="Top-p")
    max_new_tokens: int = opt(256, "longest response, in tokens", label="Max new tokens")
    seed: int = opt(0, "seed for picking instructions and for sampling", label="Seed")
    batch_size: int = opt(64, "sequences generated together (lower it if memory runs out)", label="Batch size")
    adapter: str = opt("", "a LoRA adapter of this run to sample with (its name), or empty for the plain model",
                       label="Adapter")
    engine: str = opt("auto", ENGINE_HELP, ENGINE_CHOICES, label="Engine")
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)

    def validate(self) -> "SampleConfig":
        if self.k < 1:
            raise LabError(f"--k must be at least 1 (got {self.k}): it is the number of responses per instruction.")
        if self.k > MAX_K:
            raise LabError(f"--k {self.k} is more than {MAX_K} responses per instruction: judging and ranking grow "
                           f"with K squared; 4-16 is usual. Ask for at most {MAX_K}.")
        if self.n < 1:
            raise LabError(f"--n must be at least 1 (got {self.n}).")
        check_decoding(self.temperature, self.top_p, self.max_new_tokens, self.batch_size)
        return self

    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.max_new_tokens, self.seed)


def check_decoding(temperature: float, top_p: float, max_new_tokens: int, batch_size: int) -> None:
    """The decoding checks every generating stage shares (sample, compare, iterate)."""
    if not 1 <= max_new_tokens <= 8192:
        raise LabError(f"--max-new-tokens must be between 1 and 8192 (got {max_new_tokens}); "
                       "256-512 is typical for chat answers.")
    if temperature < 0 or not 0 < top_p <= 1:
        raise LabError("--temperature must be >= 0 and --top-p in (0, 1].")
    if batch_size < 1:
        raise LabError(f"--batch-size must be at least 1 (got {batch_size}).")


# ---- the stage -------------------------------------------------------------------------------------------------
def _check_model_matches(existing: list[dict], cfg: SampleConfig, adapter: str | None) -> None:
    used = {(s["model"], s.get("adapter")) for s in existing}
    if used and used != {(cfg.model, adapter)}:
        names = ", ".join(sorted(m + (f" + adapter {a}" if a else "") for m, a in used))
        head = f"This run's samples come from {names}, not {cfg.model}" + (f" + adapter {adapter}" if adapter else "")
        raise LabError(f"{head}: start a new run (--run NEW_NAME) to sample another model.",
                       ui=f"{head}: type a new run name at the top to sample another model.")


DISTRIBUTION = ("temperature", "top_p", "max_new_tokens")  # the decoding settings that shape the answers


def _check_decoding_matches(existing: list[dict], cfg: SampleConfig) -> None:
    """Samples added to a run must come from the same distribution as those it holds: a pair of answers drawn with
    different temperatures or length limits compares the settings, not the answers. (The seed may differ.)"""
    asked = cfg.decoding().to_dict()
    held = {k: {(s.get("decoding") or {}).get(k) for s in existing} - {None} for k in DISTRIBUTION}
    off = [k for k in DISTRIBUTION if held[k] - {asked[k]}]
    if not off:
        return
    was = "; ".join(f"--{flag(k)} " + "/".join(sorted(map(str, held[k]))) for k in off)
    head = f"This run's {len(existing)} samples were drawn with {was}, not " + \
        ", ".join(f"--{flag(k)} {asked[k]}" for k in off)
    raise LabError(f"{head}: use the same settings to add samples to it, or sample into a new run (--run NEW_NAME).",
                   ui=f"{head}: set them back to add samples to this run, or type a new run name at the top.")


def _check_known_ids(run: Run, items: list[Instruction]) -> None:
    """An id the run already holds must still mean the same prompt: its samples would be taken for the new one's."""
    known = {r["id"]: r["prompt"] for r in run.read("instructions")}
    clash = next((i for i in items if i.id in known and known[i.id].strip() != i.prompt.strip()), None)
    if clash:
        raise LabError(f"Instruction id {clash.id!r} ({clash.source}) names another prompt than the same id in run "
                       f"{run.name}'s instructions.jsonl ({known[clash.id][:60]!r}): give it a new id, or sample into "
                       "a new run (--run NEW_NAME).")


def _register_instructions(run: Run, items: list[Instruction]) -> None:
    known = {r["id"] for r in run.read("instructions")}
    run.append("instructions", (i.to_dict() for i in items if i.id not in known))


def _missing(items: list[Instruction], existing: list[dict], k: int, adapter: str | None) -> list[Unit]:
    """The samples each instruction lacks, as engine units keyed by its id, answered with the adapter so named."""
    have = {(s["instruction_id"], s["sample_index"]) for s in existing}
    units = [Unit(n, [j for j in range(k) if (it.id, j) not in have], it.id, adapter) for n, it in enumerate(items)]
    return [u for u in units if u.indices]


def _records(item: Instruction, indices: list[int], comps: list[Completion], texts_seen: dict, cfg: SampleConfig,
             cm, adapter: str | None) -> list[dict]:
    out = []
    for j, c in zip(indices, comps):
        dup = texts_seen.setdefault(c.text, j)
        out.append(sample_record(item.id, j, item.prompt, c, cfg.model, cm.path, cfg.decoding().to_dict(),
                                 dup if dup != j else None, adapter))
    return out


def run(run: Run, cfg: SampleConfig, progress: Progress | None = None) -> dict:
    """The sample stage (its lab.stages row): cfg.instructions answered by cfg.model (with cfg.adapter)."""
    return sample_responses(run, cfg, progress)


def sample_responses(run: Run, cfg: SampleConfig, progress: Progress | None = None,
                     items: list[Instruction] | None = None, adapter_path: Path | None = None,
                     desc: str = "sampling") -> dict:
    """The sample stage's work: writes instructions.jsonl and samples.jsonl, resuming whatever is already there.
    items: the instructions to answer (default: cfg.instructions, cfg.n); adapter_path: an adapter folder to sample
    with (default: cfg.adapter, an adapter of this run). Holds the run's "sample" lock: a second sampler on the same
    run is refused (it would write every record twice)."""
    cfg.validate()
    adapter = adapter_path or (resolve_adapter(run, cfg.adapter) if cfg.adapter else None)
    with run.lock("sample"), efficiency.measure(run, "sample"):
        return _sample_locked(run, cfg, progress, items, adapter, desc)


def resolve_adapter(run: Run, name: str) -> Path:
    return resolve_adapters(run, name)[name]


def _sample_locked(run: Run, cfg: SampleConfig, progress: Progress | None, items: list[Instruction] | None,
                   adapter: Path | None, desc: str) -> dict:
    items = items if items is not None else load_instructions(cfg.instructions, cfg.n, cfg.seed,
                                                              cfg.instruction_column)
    _check_known_ids(run, items)
    existing = run.read("samples")
    _check_model_matches(existing, cfg, str(adapter) if adapter else None)
    _check_decoding_matches(existing, cfg)
    name = pick_engine(cfg.engine, precision.probe(cfg.device).kind)
    progress = progress or Progress(desc)
    progress.loading(f"model {cfg.model}")
    cm = ENGINES[name].load(cfg.model, cfg.device, cfg.dtype)
    units = _missing(items, existing, cfg.k, POLICY if adapter else None)
    encoded = {u.prompt: cm.encode_prompt(items[u.prompt].prompt) for u in units}
    _check_lengths(cm, encoded, cfg)  # every check before the first write: bad input leaves the run untouched
    job = _Job(run, cfg, items, existing, progress, adapter, desc, name)
    with ENGINES[name].session(cm, {POLICY: adapter} if adapter else {}) as session:
        written, tokens_per_s = _generate_missing(job, session, cm, units, encoded)
    progress.close()
    return summarize(run) | {"written_now": written, "tokens_per_s": tokens_per_s if written else None,
                             "engine": name, "warnings": _downstream_warnings(run, written)}


def _downstream_warnings(run: Run, written: int) -> list[str]:
    """New samples in a run whose later stages already ran: what was made from the old set does not hold them."""
    scored = [s for s in run.read("scores") if s.get("set") == "train"]
    made = [what for what, there in (("judgments", run.read("judgments")), ("rankings", run.read("rankings")),
                                     ("self-scores", scored), ("adapters", run.adapters())) if there]
    if not written or not made:
        return []
    return [f"{written} new sample{'s' if written != 1 else ''} joined this run after its {', '.join(made)} were "
            "made, which do not hold them: judge, rank or score again (they add what is missing), then rebuild the "
            "pairs and train new adapters."]


@dataclass
class _Job:
    """What generating a run's missing samples needs besides the model and the units."""

    run: Run
    cfg: SampleConfig
    items: list[Instruction]
    existing: list[dict]
    progress: Progress
    adapter: Path | None
    desc: str
    engine: str

    def recorder(self, cm):
        """A callable that registers the instructions and records the stage, once, before the first append."""
        def record() -> None:  # once the first answer exists: a failure before it leaves the run as it was
            _register_instructions(self.run, self.items)
            self.run.record_stage("sample", {**self.cfg.to_dict(), "adapter_path": str(self.adapter) if self.adapter
                                             else None, "model_path": cm.path, "model_info": cm.info,
                                             **engine_record(self.engine)})
        return once(record)

    def seen(self) -> dict[str, dict[str, int]]:
        """{instruction id: {text: first sample index}} of the samples already written (duplicates point there)."""
        seen: dict[str, dict[str, int]] = {}
        for s in self.existing:
            seen.setdefault(s["instruction_id"], {}).setdefault(s["text"], s["sample_index"])
        return seen


def _generate_missing(job: _Job, session, cm, units: list[Unit], encoded) -> tuple[int, float]:
    """Generate every missing (instruction, samples) unit through the engine's session, appending each batch (or
    sample) as the engine hands it over. -> (records written, new tokens per second)."""
    started, seen, cfg = job.recorder(cm), job.seen(), job.cfg
    total = len(job.items) * cfg.k
    before = total - sum(len(u.indices) for u in units)
    adapter = str(job.adapter) if job.adapter else None
    written = [0]

    def take(u: Unit, comps: list[Completion]) -> None:
        item = job.items[u.prompt]
        recs = _records(item, u.indices, comps, seen.setdefault(item.id, {}), cfg, cm, adapter)
        started()
        written[0] += job.run.append("samples", recs)

    rate = session.units(units, encoded, cfg.decoding(), cfg.batch_size,
                         ShiftedProgress(job.progress, before, total, job.desc), take)
    return written[0], rate


def _check_lengths(cm, encoded: dict, cfg: SampleConfig) -> None:
    limit = cm.info.get("context")
    longest = max((len(e) for e in encoded.values()), default=0)
    if limit and longest + cfg.max_new_tokens > limit:
        raise LabError(f"The longest prompt ({longest} tokens) plus --max-new-tokens {cfg.max_new_tokens} exceeds "
                       f"this model's context of {limit} tokens: lower --max-new-tokens or shorten that instruction.")


def summarize(run: Run) -> dict:
    """Counts for the CLI and the app: instructions, samples, duplicates, truncated responses."""
    samples = run.read("samples")
    return {"run": run.name, "file": str(run.file("samples")),
            "instructions": len({s["instruction_id"] for s in samples}), "samples": len(samples),
            "duplicates": sum(s["duplicate_of"] is not None for s in samples),
            "truncated": sum(s["finish_reason"] == "length" for s in samples)}
