"""One row per stage (STAGES, in pipeline order), holding real references: its settings dataclass, the function
that runs it, always its module's `run(run, settings, progress) -> summary dict`, its help, the hosted app's admit
check (lab.hosting, which calls lab.limits' caps), the app's tab that runs it (a key lab/ui maps to a title: lab
never imports gradio), the stages whose results it builds on and the rules that label its results as noise
(lab.noise), what Ctrl-C does to it, whether it writes into the run and generates tokens, and its run.json entry.
The command line (lab.cli), the app's jobs and their *Redo* lines, `--config` files, hosting, the app's wording and
the noise labels read these rows; nothing else lists stages (a pair source names the stage that made its
preferences in its own lab.pairs.SOURCES entry).

Every module named here imports without torch or gradio (their heavy imports are inside functions), so the app and
`python -m lab --help` can import all of them at start; static tools follow the references.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lab import chat, compare, hosting, hub, iterate, judge, merge, noise, pairs, rank, report, sample, score, train


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type  # its settings dataclass: the stage's flags, its form's fields, its run.json entry
    run: Callable[..., dict]  # (run, settings, progress) -> summary dict
    help: str
    description: str = ""
    new_run: bool = False  # may start a new run (else the run must exist)
    tab: str = ""  # the app's tab that runs it: a lab.ui module's name (lab/ui maps it to the tab's title)
    admit: Callable | None = None  # (run, settings): a hosted app's rules and the owner's caps (lab.limits), checked
    #                                before anything is written (lab.hosting.admit); None: nothing to check
    upstream: tuple[str, ...] = ()  # stages whose results it builds on: their noise labels are its own (lab.noise)
    noise: Callable[[dict, str], list[tuple[str, str]]] | None = None  # (its settings, the run's sampling model) ->
    #      the (kind, spec) of the models, rankers and judges its results come from (lab.noise's *_specs)
    source: Callable[[dict], str | None] | None = None  # its settings -> the pair source it builds on; its upstream is
    #      then sample and the stage that made that source's preferences (lab.pairs.SOURCES' `stage`)
    labels_as: Callable[..., tuple[str, dict]] | None = None  # (run, its settings) -> the stage and settings whose
    #      noise labels are its own (a merged model: its adapter's training)
    recorded_as: Callable[[dict], str] | None = None  # its settings -> its run.json entry, where not its name
    stops: bool = True  # False: no safe point to stop at; Ctrl-C quits at once (lab.cli) and there is nothing to resume
    writes: bool = True  # False: it writes nothing into the run (chat): its labels are its settings' alone (lab.ui)
    generates: bool = False  # generates tokens on this machine: its efficiency records give the generation pace
    #      (lab.iterate's estimate)

    def entry(self, settings: dict) -> str:
        """The name of its run.json entry for these settings (lab.configfile reads it back)."""
        return self.recorded_as(settings) if self.recorded_as else self.name


STAGES = [  # pipeline order
    Stage("sample", sample.SampleConfig, sample.run,
          "generate K responses per instruction with the model's chat template", new_run=True,
          tab="sample", admit=hosting.admit_sample, noise=noise.model_specs, generates=True),
    Stage("judge", judge.JudgeConfig, judge.run,
          "LLM judge: pairwise verdicts in both orders (groq, openai-compatible, local)",
          "Prints the plan's calls, time and cost first (on stderr), then judges (unless --estimate-only).",
          tab="judge", admit=hosting.admit_judge, upstream=("sample",), noise=noise.judge_specs),
    Stage("rank", rank.RankConfig, rank.run,
          "rank each instruction's responses with PairRM (llm-blender) or a reward model",
          "PairRM compares every pair of responses in both orders, a reward model scores each response alone; "
          "appends rankings.jsonl (format: lab/records/rankings.py). "
          "Instructions already ranked with the same ranker are skipped.",
          tab="rank", admit=hosting.admit_rank, upstream=("sample",), noise=noise.ranker_specs),
    Stage("score", score.ScoreConfig, score.run,
          "self-rewarding scores: each response judged R times with an additive 5-point prompt",
          "Appends scores.jsonl (format: lab/records/scores.py); answers already scored by the same judge are skipped.",
          tab="iterate", admit=hosting.admit_score, upstream=("sample",), noise=noise.self_judge_specs, generates=True),
    Stage("pairs", pairs.PairsConfig, pairs.run,
          "build chosen/rejected pairs (TRL format) from the judge's verdicts, PairRM, a reward model or self-scores",
          "Rewrites pairs-<source>.jsonl (format: lab/records/pairs.py) and prints its statistics: pair count, "
          "instructions without a pair, length balance, judge-vs-ranker agreement (PairRM, reward model).",
          tab="rank", source=noise.built_source, recorded_as=pairs.entry_name),
    Stage("train", train.TrainConfig, train.run,
          "train a LoRA adapter on a preference data set (TRL + PEFT)",
          "Trains runs/<run>/adapters/<adapter>/ (docs/training.md). Runs unchanged under `accelerate launch -m lab "
          "train ...` on several GPUs. Rerunning an interrupted or stopped training resumes it from its last "
          "checkpoint.", new_run=True,
          tab="train", admit=hosting.admit_train, upstream=("sample",), noise=noise.model_specs,
          source=noise.trained_source),
    Stage("compare", compare.CompareConfig, compare.run,
          "base vs adapters on held-out instructions: grid, win rates, length, diversity",
          tab="compare", admit=hosting.admit_compare, upstream=("sample", "judge", "rank", "score"),
          noise=noise.compare_specs, generates=True),
    Stage("iterate", iterate.IterateConfig, iterate.run,
          "self-rewarding DPO: sample, score yourself, train on best vs worst, repeat",
          tab="iterate", admit=hosting.admit_iterate, noise=noise.iterate_specs),
    Stage("merge", merge.MergeConfig, merge.run,
          "fold a LoRA adapter into its base (PEFT merge_and_unload): a plain transformers checkpoint",
          "Writes runs/<run>/merged/<adapter>/ (safetensors, tokenizer, model card; lab/merge.py), which loads with "
          "transformers alone; `push` publishes it as a model repo.",
          tab="share", admit=hosting.admit_merge, labels_as=noise.adapter_training, stops=False),
    Stage("chat", chat.ChatConfig, chat.run,
          "talk to the base model or an adapter of the run, multi-turn, the reply streamed",
          "With --message, answers it and exits; otherwise every line typed on stdin is a turn (end of input "
          "ends the chat). Replies stream to stderr; the summary with the last reply goes to stdout. Writes "
          "nothing into the run.",
          tab="chat", admit=hosting.check_chat, noise=noise.model_specs, stops=False, writes=False),
    Stage("report", report.ReportConfig, report.run,
          "write runs/<run>/report/: tables, figures and judge examples for a write-up (numbers only)",
          "Rewrites the whole folder: README.md (an index), efficiency.csv, judge-examples.md, scores, training "
          "curves per adapter, per-round stability of self-rewarding runs, the comparison grid and your notes.",
          tab="share", upstream=("sample", "judge", "rank", "score", "train", "compare", "iterate")),
    Stage("push", hub.PushConfig, hub.run,
          "push the run's preference data sets and adapters to the Hub, with cards",
          "Stages each repo under <run>/hub/<repo>/ and uploads that folder. The token comes from $HF_TOKEN (or "
          "`hf auth login`); it is never written anywhere.",
          tab="share", upstream=("sample", "judge", "rank", "score", "train", "compare", "iterate")),
]
BY_NAME = {s.name: s for s in STAGES}
