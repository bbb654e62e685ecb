"""Self-rewarding DPO (Yuan et al., 2024, "Self-Rewarding Language Models"): the model answers, scores its own
answers, and is trained on its best answer against its worst, round after round.

A round is the lab's stages run again on a nested run, runs/<run>/iterations/<k>/ (lab.store.Run.iteration): no
second pipeline. Its policy M(k-1) is the base with the adapter of round k-1 switched on (round 1: the plain base,
or --start-adapter):

  1. sample   lab.sample.sample_responses with the policy's adapter: N answers per instruction (T=0.7, top-p 0.9 as in
              the paper) -> samples.jsonl ("adapter": the policy's folder)
  2. score    lab.score: every answer scored R times with the paper's additive 5-point prompt, by M(k-1) itself or
              an API model (--judge) -> scores.jsonl (set "train")
  3. pairs    lab.pairs, source "self": per instruction the answer with the highest mean score against the lowest
              -> pairs-self.jsonl; instructions whose best and worst tie are dropped
  4. train    lab.train.train_adapter from M(k-1)'s adapter, which is also the frozen DPO reference, so round k
              improves on round k-1 rather than on the base -> adapters/round-<k>/
  5. compare  lab.compare: base, M(k-1) and M(k) on held-out instructions, scored by one fixed evaluator for every
              round (the base model's 5-point scores, or the API judge's) -> compare.jsonl, scores.jsonl (set
              "eval"), compare-scores.json. Round k first takes round k-1's answers and scores of base and M(k-1)
              (same instructions, decoding, seeds and evaluator: the same numbers), so only M(k) is new work.

iterate.jsonl (run root), one line per finished round: its lineage and statistics:

    {"round": k, "policy": adapter path | null, "reference": adapter path | null, "adapter": path,
     "judge": str, "instructions": int, "samples": int, "evaluations": int, "unscored": int,
     "pairs_kept": int, "dropped_ties": int, "dropped_unscored": int,
     "score_hist": {"0".."5": count of evaluations, rounded}, "score_mean": float,
     "chars_mean": float, "chosen_chars_mean": float, "rejected_chars_mean": float,
     "eval": {"instructions": int, "chars_mean": {model: float}, "score_mean": {model: float},
              "win_rate_vs_base": lab.stats.win_rate dict | null, "win_rate_vs_previous": ... | null,
              "checks": null | {"n": int,                  # held-out instructions with IFEval checks (lab.checks)
                                "accuracy": {model: lab.stats.mean_ci dict},   # prompt-level strict accuracy
                                "vs_base": lab.stats.paired_difference dict}}, # round k's adapter minus the base
     "train": {"global_step", "final": {metric: value}}, "time": str}
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lab import efficiency, models
from lab.adapters import BASE, check_same_base, read_state, resolve_adapters, status
from lab.compare import CompareConfig, compare_run, find_duplicates
from lab.config import Settings, opt
from lab.errors import LabError
from lab.engines import ENGINE_CHOICES, ENGINE_HELP
from lab.generation import AUTO_BATCH, AUTO_BATCH_HELP, auto_batch
from lab.instructions import Instruction, load_instructions
from lab.judge_backends import API_BACKENDS
from lab.pairs import PairsConfig, build_pairs
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.records.scores import mean_scores, score_summary
from lab.sample import SampleConfig, check_decoding, sample_responses
from lab.score import PROMPT_HASH, ScoreConfig, api_backend, score_samples
from lab.stats import mean
from lab.store import Run, once, read_jsonl
from lab.train import TrainConfig, train_adapter

ADAPTER = "round-{}"


@dataclass
class IterateConfig(Settings):
    """Self-rewarding DPO. docs/iterative.md explains every field and the paper's values."""

    model: str = opt("", "base model spec (default: the model this run sampled with)")
    rounds: int = opt(2, "self-rewarding rounds; round k trains adapter round-k from round k-1", label="Rounds")
    instructions: str = opt("run", "training instructions: 'run' (this run's instructions.jsonl), 'bundled', or a file")
    n: int = opt(0, "how many instructions (0 = all)", label="Instructions (0 = all of the run's)")
    samples: int = opt(4, "answers per instruction each round (the paper's N)", label="Answers per instruction (N)")
    evaluations: int = opt(3, "times each answer is scored; the scores are averaged (the paper's R)",
                           label="Scores per answer (R)")
    temperature: float = opt(0.7, "sampling temperature of the answers")
    top_p: float = opt(0.9, "nucleus sampling threshold of the answers")
    max_new_tokens: int = opt(256, "longest answer, in tokens", label="Max new tokens")
    judge: str = opt("self", "who scores: self (the current model, as in the paper) or an API judge",
                     ("self", *API_BACKENDS), label="Judge")
    judge_model: str = opt("", "API judge model (default: the backend's default)", label="API judge model")
    judge_tokens: int = opt(160, "longest judgment (justification + score), in tokens")
    judge_temperature: float = opt(0.7, "sampling temperature of the judgments (0 makes the R scores identical)")
    score_mode: str = opt("auto", "auto: a local judgment without 'Score: N' is scored from the digit probabilities "
                          "after 'Score: '; parse: such judgments count as unscored", ("auto", "parse"))
    rpm: float = opt(30.0, "API judge: most requests per minute (Groq's free tier allows 30)")
    start_adapter: str = opt("", "adapter of this run that round 1 starts from (default: the plain base)",
                             label="Round 1 starts from")
    eval_instructions: str = opt("heldout", "held-out instructions for the per-round win rates: 'heldout', "
                                 "'checks-heldout' (with IFEval checks: a number no judge produced) or a file")
    eval_n: int = opt(16, "held-out instructions per round evaluation (0 = no evaluation); on instructions with IFEval "
                      "checks (--eval-instructions checks-heldout) each round's checks accuracy is recorded too",
                      label="Held-out instructions per round")
    beta: float = opt(0.1, "DPO beta of each round (the paper's 0.1)", label="Beta")
    lr: float = opt(5e-5, "learning rate of each round's LoRA training", label="Learning rate")
    epochs: float = opt(2.0, "passes over a round's pairs", label="Epochs")
    max_steps: int = opt(-1, "cap on optimizer steps per round (-1 = run the epochs)", label="Max steps")
    lora_r: int = opt(16, "LoRA rank of round 1 (later rounds keep the shape of the adapter they continue)",
                      label="LoRA rank")
    train_batch_size: int = opt(4, "pairs per training step")
    gradient_checkpointing: bool = opt(True, "each round's training recomputes activations in the backward pass: far "
                                       "less memory, each step ~30% slower (GPU and CPU alike)",
                                       label="Gradient checkpointing")
    seed: int = opt(0, "seed for sampling, judging and training (each round offsets it by its number)", label="Seed")
    batch_size: int = opt(0, AUTO_BATCH_HELP + " (lower it if memory runs out)")
    engine: str = opt("auto", "every round's sampling, self-scoring and evaluation: " + ENGINE_HELP, ENGINE_CHOICES,
                      label="Engine")
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)

    def validate(self) -> "IterateConfig":
        if self.batch_size < 0:
            raise LabError(f"--batch-size must be 0 (auto) or more (got {self.batch_size}).")
        check_decoding(self.temperature, self.top_p, self.max_new_tokens, self.batch_size or AUTO_BATCH)  # 0: auto
        if self.rounds < 1 or self.samples < 2 or self.evaluations < 1:
            raise LabError(f"--rounds must be >= 1, --samples >= 2 (a pair needs two answers) and --evaluations >= 1 "
                           f"(got {self.rounds}, {self.samples}, {self.evaluations}).")
        if self.judge_tokens < 8 or self.judge_temperature < 0:
            raise LabError("--judge-tokens must be at least 8 (a justification and 'Score: N'; 160 is typical) and "
                           "--judge-temperature >= 0.")
        if self.n < 0 or self.eval_n < 0 or self.rpm < 0:
            raise LabError("--n and --eval-n must be 0 (all / none) or more, --rpm 0 (no limit) or more.")
        if self.train_batch_size < 1:
            raise LabError(f"--train-batch-size must be at least 1 (got {self.train_batch_size}).")
        self.train_config(1, self.train_batch_size).validate()  # before round 1 samples anything, not after
        self.score_config(1).validate()
        return self

    def sample_config(self, k: int) -> SampleConfig:
        """Round k's sampling: N answers per instruction, seeded by the round."""
        return SampleConfig(model=self.model, n=1, k=self.samples, temperature=self.temperature, top_p=self.top_p,
                            max_new_tokens=self.max_new_tokens, seed=self.seed + k, batch_size=self.batch_size,
                            engine=self.engine, device=self.device, dtype=self.dtype)

    def score_config(self, k: int) -> ScoreConfig:
        """Round k's self-scoring (or the API judge's) of its answers."""
        return ScoreConfig(judge=self.judge, judge_model=self.judge_model, evaluations=self.evaluations,
                           judge_tokens=self.judge_tokens, judge_temperature=self.judge_temperature,
                           score_mode=self.score_mode, rpm=self.rpm, seed=self.seed + 100 * k,
                           batch_size=self.batch_size, engine=self.engine, device=self.device, dtype=self.dtype)

    def compare_config(self) -> CompareConfig:
        """Every round's evaluation: base, M(k-1) and M(k) on the held-out instructions, scored by one fixed
        evaluator (the base model, or the API judge), so win rates can be compared across rounds."""
        return CompareConfig(model=self.model, instructions=self.eval_instructions, temperature=self.temperature,
                             top_p=self.top_p, max_new_tokens=self.max_new_tokens, seed=self.seed,
                             batch_size=self.batch_size, score="base" if self.judge == "self" else self.judge,
                             score_model=self.judge_model, score_evaluations=self.evaluations,
                             score_tokens=self.judge_tokens, score_temperature=self.judge_temperature,
                             judge_rpm=self.rpm, engine=self.engine, device=self.device, dtype=self.dtype)

    def train_config(self, k: int, n_pairs: int) -> TrainConfig:
        """The DPO settings of round k, trained on n_pairs pairs (a batch no larger than the pairs)."""
        return TrainConfig(pairs="self", adapter=ADAPTER.format(k), model=self.model, beta=self.beta, lr=self.lr,
                           epochs=self.epochs, max_steps=self.max_steps, lora_r=self.lora_r, lora_alpha=2 * self.lora_r,
                           batch_size=min(self.train_batch_size, n_pairs), eval_fraction=0.0, seed=self.seed + k,
                           gradient_checkpointing=self.gradient_checkpointing, device=self.device, dtype=self.dtype)


# ---- instructions --------------------------------------------------------------------------------------------------
def training_instructions(run: Run, cfg: IterateConfig) -> list[Instruction]:
    """The instructions every round answers: the run's own (default) or a source."""
    if cfg.instructions == "run":
        items = run.read("instructions")
        if not items:
            raise LabError(f"Run {run.name} has no instructions yet: sample first (`python -m lab sample --run "
                           f"{run.name}`), or pass --instructions bundled (or a file).",
                           ui=f"Run {run.name} has no instructions yet: sample first in the Sample tab.")
        fields = Instruction.__dataclass_fields__
        return [Instruction(**{k: v for k, v in i.items() if k in fields}) for i in items[:cfg.n or None]]
    return load_instructions(cfg.instructions, cfg.n or None, cfg.seed)


def evaluation_instructions(items: list[Instruction], cfg: IterateConfig) -> list[dict]:
    """Held-out instructions for the per-round win rates, minus any that duplicate a training instruction."""
    if not cfg.eval_n:
        return []
    held = [i.to_dict() for i in load_instructions(cfg.eval_instructions, None, cfg.seed)]
    dups = find_duplicates(held, {i.id: i.prompt for i in items}, 0.7)
    kept = [h for h in held if h["id"] not in dups][:cfg.eval_n]
    if not kept:
        raise LabError(f"Every instruction of --eval-instructions {cfg.eval_instructions!r} is (nearly) a training "
                       "instruction: give new ones, or --eval-n 0 to skip the per-round evaluation.")
    return kept


def start_policy(run: Run, cfg: IterateConfig, base_path: str) -> Path | None:
    if not cfg.start_adapter:
        return None
    found = resolve_adapters(run, cfg.start_adapter)
    check_same_base(found, cfg.model, base_path)
    return next(iter(found.values()))


# ---- one round: the stages on iterations/<k>/ ---------------------------------------------------------------------
@dataclass
class Round:
    k: int
    run: Run  # iterations/<k>/
    policy: Path | None  # M(k-1)'s adapter; None = the plain base
    cfg: IterateConfig
    progress: Progress
    api_key: str | None = None

    @property
    def policy_name(self) -> str | None:
        return ADAPTER.format(self.k - 1) if self.policy else None


def data_round(r: Round, items: list[Instruction]) -> dict:
    """Sample, score and pair round k (stages 1-3); -> its statistics so far. No pairs is a LabError."""
    sample_responses(r.run, r.cfg.sample_config(r.k), r.progress, items=items, adapter_path=r.policy, desc="sampling")
    score_samples(r.run, r.cfg.score_config(r.k), r.progress, api_key=r.api_key, desc="scoring")
    stats = build_pairs(r.run, PairsConfig(source="self"))
    unscored = stats["dropped"].get("unscored", 0)
    kept = {"pairs_kept": stats["pairs"], "dropped_unscored": unscored,
            "dropped_ties": stats["instructions"] - stats["pairs"] - unscored}
    if not stats["pairs"]:
        raise LabError(f"Round {r.k}: no pairs to train on ({kept['dropped_ties']} instructions tied, "
                       f"{unscored} could not be scored). Use more answers per instruction, more instructions, a "
                       f"higher temperature, or a stronger judge; what was sampled and scored is saved in the run.")
    policy = str(r.policy) if r.policy else None
    return {"round": r.k, "policy": policy, "reference": policy, "judge": r.cfg.score_config(r.k).name,
            "instructions": len(items), **kept, **round_stats(r.run)}


def round_stats(run: Run) -> dict:
    """Counts, the self-score histogram and the answer lengths of a round (the iterate.jsonl fields)."""
    samples, pairs = run.read("samples"), read_jsonl(run.pairs_file("self"))
    scored = score_summary(run)
    return {"samples": len(samples), "evaluations": scored["evaluations"], "unscored": scored["unscored"],
            "score_hist": scored["score_hist"], "score_mean": scored["score_mean"],
            "chars_mean": mean(len(s["text"]) for s in samples),
            "chosen_chars_mean": mean(len(p["chosen"][0]["content"]) for p in pairs),
            "rejected_chars_mean": mean(len(p["rejected"][0]["content"]) for p in pairs)}


def train_round(r: Round, n_pairs: int) -> Path:
    """Stage 4: DPO on the round's pairs, continuing from (and referenced to) the policy's adapter."""
    out = r.run.adapter_dir(ADAPTER.format(r.k))
    if status(out) == "done":
        return out
    r.progress.update(0, 1, "training")
    return train_adapter(r.run, "self", ADAPTER.format(r.k), r.cfg.train_config(r.k, n_pairs),
                         base_model=r.cfg.model, init_adapter=str(r.policy) if r.policy else None,
                         progress=r.progress)


def eval_round(r: Round, adapter: Path, items: list[dict], previous: Run | None) -> dict:
    """Stage 5: base, M(k-1) and M(k) on the held-out instructions, scored by the fixed evaluator."""
    if not items:
        return {"instructions": 0, "chars_mean": {}, "score_mean": {}, "win_rate_vs_base": None,
                "win_rate_vs_previous": None}
    new = ADAPTER.format(r.k)
    adapters = {**({r.policy_name: r.policy} if r.policy else {}), new: adapter}
    cfg = r.cfg.compare_config()
    if previous is not None:
        reuse_previous(previous, r.run, [BASE, *adapters][:-1])
    out = compare_run(r.run, cfg, r.progress, api_key=r.api_key, items=items, adapters=adapters)
    scores = json.loads(r.run.file("compare_scores").read_text(encoding="utf-8"))
    means = mean_scores([s for s in r.run.read("scores") if s["judge"] == cfg.score_config().name], "eval")
    return {"instructions": out["instructions"],
            "chars_mean": {m: s["mean_chars"] for m, s in scores["per_model"].items() if s["n"]},
            "score_mean": {m: mean(v for (n, _), v in means.items() if n == m) for m in out["models"]},
            "win_rate_vs_base": scores["win_rates"][new].get("score"),
            "win_rate_vs_previous": scores["head_to_head"].get(f"{new} vs {r.policy_name}", {}).get("score"),
            "checks": round_checks(scores.get("checks"), new)}


def round_checks(found: dict | None, new: str) -> dict | None:
    """The iterate.jsonl view of a round's checks scores (lab.compare_scorers.checks_summary): prompt-level strict."""
    if not found or not found["n"]:
        return None
    return {"n": found["n"], "accuracy": {m: lv["prompt_strict"] for m, lv in found["per_model"].items()},
            "vs_base": found["vs_base"][new]["prompt_strict"]}


def reuse_previous(previous: Run, run: Run, names: list[str]) -> None:
    """Copy round k-1's completions and evaluation scores of the models it already evaluated (base, M(k-1)) into
    round k: the same instructions, decoding, seeds and evaluator give the same numbers, so they are not made again
    (compare and score skip what their files already hold)."""
    if run.read("compare"):
        return  # copied before (a resumed round)
    run.append("compare", [c for c in previous.read("compare") if c["model"] in names])
    run.append("scores", [s for s in previous.read("scores") if s["set"] == "eval" and s["model"] in names])


def one_round(run: Run, k: int, policy: Path | None, items: list[Instruction], eval_items: list[dict],
              cfg: IterateConfig, progress: Progress, api_key: str | None) -> dict:
    """Round k: the stages on iterations/<k>/, then its iterate.jsonl line."""
    r = Round(k, run.iteration(k), policy, cfg, progress, api_key)
    progress.prefix = f"round {k} · "  # every phase of the round names it, a model loading too
    line = data_round(r, items)
    progress.check_stop()  # between stages: a stop asked for during the last batch stops here, not minutes later
    adapter = train_round(r, line["pairs_kept"])
    progress.check_stop()
    line["eval"] = eval_round(r, adapter, eval_items, run.iteration(k - 1) if k > 1 else None)
    state = read_state(adapter) or {}
    return {**line, "adapter": str(adapter), "train": {"global_step": state.get("global_step"),
                                                        "final": state.get("final", {})},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- the stage -------------------------------------------------------------------------------------------------------
def run(run: Run, cfg: IterateConfig, progress: Progress | None = None) -> dict:
    """The iterate stage (its lab.stages row); an API judge's key comes from the environment."""
    return iterate_rounds(run, cfg, progress)


def iterate_rounds(run: Run, cfg: IterateConfig, progress: Progress | None = None, api_key: str | None = None
                   ) -> dict:
    """The iterate stage's work: rounds 1..cfg.rounds of self-rewarding DPO. Finished rounds (iterate.jsonl) are kept and
    skipped; an interrupted round resumes from its files (samples, scores, the training checkpoint).
    api_key: an API judge's key passed in memory (else read from the environment).
    Holds the run's "iterate" lock: a second iteration of the run is refused."""
    with run.lock("iterate"), efficiency.measure(run, "iterate"):
        return _iterate_locked(run, cfg, progress, api_key)


def _iterate_locked(run: Run, cfg: IterateConfig, progress: Progress | None, api_key: str | None) -> dict:
    cfg = replace(cfg, model=models.run_model(run, cfg.model)).validate()
    items = training_instructions(run, cfg)
    eval_items = evaluation_instructions(items, cfg)
    api_backend(cfg.score_config(1), api_key)  # a missing API key fails here, before any work
    base_path = models.resolve(cfg.model)
    cfg = replace(cfg, batch_size=batch_for(run, cfg, base_path))
    policy = start_policy(run, cfg, base_path)
    started = once(lambda: run.record_stage("iterate", {
        **cfg.to_dict(), "base_path": base_path, "judge_name": cfg.score_config(1).name, "prompt_hash": PROMPT_HASH,
        "instruction_ids": [i.id for i in items], "eval_instruction_ids": [i["id"] for i in eval_items]}))
    done = {line["round"]: line for line in run.read("iterate")}
    progress = progress or Progress("iterate")
    for k in range(1, cfg.rounds + 1):
        if k not in done:
            done[k] = one_round(run, k, policy, items, eval_items, cfg, progress, api_key)
            started()
            run.append("iterate", [done[k]])
        policy = Path(done[k]["adapter"])
    ends = f"{cfg.rounds} round{'s' if cfg.rounds != 1 else ''} done"
    progress.prefix = ""
    progress.update(cfg.rounds, cfg.rounds, ends)  # not the last phase's count of round k
    progress.close()
    return {"run": run.name, "rounds": [round_summary(done[k]) for k in range(1, cfg.rounds + 1)]}


def estimate(run: Run, cfg: IterateConfig) -> dict:
    """The work of an iteration before it runs (the app's plan; what finished rounds already did is left out):
    {"rounds_to_run", "instructions", "eval_instructions", "answers", "judgments", "judge_calls" (an API judge's
     requests; 0 for self), "eval_answers", "eval_judgments", "max_tokens" (new tokens at most: every answer and
     judgment at its cap), "tokens_per_s" (this machine's measured generation pace on this run, None before any
     measure), "generation_s" (max_tokens at that pace, None without one), "train_s_per_round" (a finished round's
     training time here, None before one)}. Answers and judgments stop early mostly: the time is an upper bound."""
    cfg = replace(cfg, model=models.run_model(run, cfg.model)).validate()
    items = training_instructions(run, cfg)
    n, e = len(items), len(evaluation_instructions(items, cfg))
    todo = [k for k in range(1, cfg.rounds + 1) if k not in {ln["round"] for ln in run.read("iterate")}]
    answers, evals = len(todo) * n * cfg.samples, sum(e * (2 + bool(cfg.start_adapter) if k == 1 else 1) for k in todo)
    judged = (answers + evals) * cfg.evaluations
    tokens = (answers + evals) * cfg.max_new_tokens + judged * cfg.judge_tokens * (cfg.judge == "self")
    pace, train_s = measured_pace(run)
    return {"rounds_to_run": len(todo), "instructions": n, "eval_instructions": e, "answers": answers,
            "judgments": answers * cfg.evaluations, "judge_calls": 0 if cfg.judge == "self" else judged,
            "eval_answers": evals, "eval_judgments": evals * cfg.evaluations, "max_tokens": tokens,
            "tokens_per_s": pace, "generation_s": tokens / pace if pace else None, "train_s_per_round": train_s}


def measured_pace(run: Run) -> tuple[float | None, float | None]:
    """(generated tokens per second, seconds of a round's training) as this machine measured them on this run
    (lab.efficiency's records: sampling, scoring and comparing; the rounds' training), the latest first."""
    from lab.stages import BY_NAME  # the rows reference this module's run: read them when asked

    records = efficiency.read_all(run)
    made = [r for r in records if r["stage"] in BY_NAME and BY_NAME[r["stage"]].generates and r.get("tokens_out")
            and r.get("wall_s")]
    pace = sum(r["tokens_out"] for r in made[-4:]) / sum(r["wall_s"] for r in made[-4:]) if made else None
    trained = [r["wall_s"] for r in records if r["stage"] == "train" and r["run"].startswith("iterations/")
               and r.get("status") == "done"]
    return pace, (trained[-1] if trained else None)


def batch_for(run: Run, cfg: IterateConfig, base_path: str) -> int:
    """Sequences per generation batch: --batch-size, or for 0 (auto) the size this run's iteration recorded when it
    started (a resumed or extended iteration draws as it drew before, on any machine), else lab.generation's
    auto_batch for this model and device."""
    if cfg.batch_size:
        return cfg.batch_size
    recorded = (run.stage_settings("iterate") or {}).get("batch_size")
    return recorded or auto_batch(0, cfg.device, cfg.dtype, base_path)


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
