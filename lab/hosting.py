"""A hosted app (a public Space): whose runs a visitor may reach, which inputs stay inside the runs root, and the
checks every job passes before it starts (in the app, and again in the job's own process).

Hosted mode is on inside a Hugging Face Space (the Hub sets SPACE_ID and SYSTEM=spaces) or with LAB_HOSTED=1.
Off it (your own machine) nothing here restricts anything, except the caps you set yourself (lab.limits).

Visitors. A visitor is the Hugging Face user signed in with the Space's OAuth, else a random id the app keeps in the
browser's localStorage (lab.ui.visitors); both are stored only as `visitor_key` hashes. A run a visitor starts
records its owner in the run folder:

    runs/<run>/owner.json   {"owner": "<sha256 hex of the visitor's id>", "created": "2025-01-31T12:00:00+0000",
                             "where": "<sha256 hex of the address it came from>" or null}

A visitor starts at most LAB_MAX_RUNS new runs in 24 hours, an address twice that (lab.limits; the file's time is
the run's start). The address is the requester's as the owner's proxies report it (client_address, LAB_PROXY_HOPS).

A visitor reaches their own runs, and reads (never changes) the runs the owner lists in LAB_SHARED_RUNS
(comma-separated names). Every other run, including runs made on the command line (no owner.json), is "no such
run" to them and never listed. Run names are shared: a name another visitor took cannot be reused.

Inputs that name server files are refused in hosted mode: a model is a Hub id, 'bundled' or 'tiny-random' (no
local folders); instructions are a named set or a file uploaded into the run; training pairs are one of the run's
pair sets; adapters are the run's own; a ranker is PairRM or the tiny test ranker.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lab import limits
from lab.errors import LabError
from lab.instructions import load_instructions
from lab.judge import DEFAULT_TEMPLATE, estimate
from lab.limits import hosted
from lab.models import HUB_ID, SPECIAL_SPECS, cache_dir
from lab.pairs import resolve_pairs
from lab.records.samples import groups
from lab.store import RUN_NAME, Run, check_writable, list_runs, read_jsonl, runs_root

ROOT = Path(__file__).resolve().parent.parent
SHARED_ENV = "LAB_SHARED_RUNS"
KNOWN_RANKERS = ("llm-blender/PairRM", "tiny-random", "Skywork/Skywork-Reward-V2-Qwen3-0.6B", "tiny-reward")


# ---- visitors and their runs ----------------------------------------------------------------------------------------
def visitor_key(kind: str, value: str) -> str:
    """The hash stored for an identity: kind is "hf" (a signed-in user name) or "browser" (the random id)."""
    return hashlib.sha256(f"preference-lab:{kind}:{value}".encode()).hexdigest()


@dataclass(frozen=True)
class Visitor:
    """Who is asking. keys: the hashes this visitor answers to, the one new runs are recorded under first."""

    keys: tuple[str, ...]

    @classmethod
    def of(cls, hf_user: str | None = None, browser_id: str | None = None) -> "Visitor | None":
        """A signed-in user also keeps the runs they started in this browser before signing in."""
        keys = [visitor_key("hf", hf_user)] if hf_user else []
        keys += [visitor_key("browser", browser_id)] if browser_id else []
        return cls(tuple(keys)) if keys else None

    @property
    def primary(self) -> str:
        return self.keys[0]


def shared_runs() -> set[str]:
    """Run names the owner shares read-only with every visitor ($LAB_SHARED_RUNS, comma-separated)."""
    return {n.strip() for n in os.environ.get(SHARED_ENV, "").split(",") if RUN_NAME.match(n.strip())}


def owner_of(run: Run) -> str | None:
    try:
        return json.loads(run.file("owner").read_text(encoding="utf-8")).get("owner")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def access(name: str, visitor: Visitor | None) -> str:
    """What `visitor` may do with run `name`: "own" | "shared" (read) | "new" (a free name) | "none"."""
    if not RUN_NAME.match(name or "") or ".." in name:
        return "none"
    run = Run(runs_root() / name)
    if not run.path.exists():  # a shared name stays the owner's to create: a visitor cannot squat it
        return "new" if visitor and name not in shared_runs() else "none"
    if visitor and owner_of(run) in visitor.keys:
        return "own"
    return "shared" if name in shared_runs() else "none"


def visible_runs(visitor: Visitor | None) -> list[str]:
    """The runs a visitor may pick: their own and the shared ones."""
    return [n for n in list_runs() if access(n, visitor) in ("own", "shared")]


def _recent_claims(since: float) -> list[dict]:
    """owner.json of every run claimed after `since` (its file's time)."""
    found = []
    for name in list_runs():
        path = Run(runs_root() / name).file("owner")
        try:
            if path.stat().st_mtime >= since:
                found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def check_new_run(visitor: Visitor, where: str | None) -> None:
    """Refuse a visitor's new run past LAB_MAX_RUNS in 24 hours (their address's past twice that: a visitor may
    mint new browser ids, an address is harder to multiply)."""
    limit = limits.cap("runs")
    if limit is None:
        return
    claims = _recent_claims(time.time() - 24 * 3600)
    mine = sum(c.get("owner") in visitor.keys for c in claims)
    theirs = sum(bool(where) and c.get("where") == where for c in claims)
    if mine >= limit or theirs >= 2 * limit:
        whose = "You have" if mine >= limit else "Your network has"
        raise LabError(f"{whose} started {max(mine, theirs)} runs on this app in the last 24 hours, its cap (the "
                       f"owner sets {limits.CAPS['runs'].env}): pick one of your runs at the top of the page instead "
                       "of a new name, or come back tomorrow.")


def claim(name: str, visitor: Visitor, where: str | None = None) -> bool:
    """Create run `name` for `visitor`, who asks from address hash `where` (its folder and owner.json, atomically:
    of two visitors claiming one name at once, one wins). True if the run is now the visitor's. Past the visitor's
    run cap (check_new_run) it raises LabError."""
    if name in shared_runs():
        return False  # the owner's shared names are never a visitor's (see access)
    run = Run(runs_root() / name)
    if not run.file("owner").exists():
        check_new_run(visitor, where)
    run.path.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"owner": visitor.primary, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "where": where})
    try:
        with open(run.file("owner"), "x", encoding="utf-8") as f:
            f.write(record + "\n")
            f.flush()
            os.fsync(f.fileno())
    except FileExistsError:
        return owner_of(run) in visitor.keys
    return True


def release_if_empty(name: str) -> None:
    """Undo a claim that nothing was written under (a refused first action leaves no empty run behind)."""
    run = Run(runs_root() / name)
    if run.path.is_dir() and [p.name for p in run.path.iterdir()] == [run.file("owner").name]:
        run.file("owner").unlink(missing_ok=True)
        try:
            run.path.rmdir()
        except OSError:
            pass  # something arrived meanwhile: keep it


PROXY_HOPS_ENV = "LAB_PROXY_HOPS"


def proxy_hops() -> int:
    """How many proxies of the owner's stand in front of the app, each adding the address it saw to
    X-Forwarded-For ($LAB_PROXY_HOPS): unset, 1 on a Space (the Hub's proxy) and 0 elsewhere (the header is ignored:
    any client can send one)."""
    raw = os.environ.get(PROXY_HOPS_ENV, "").strip()
    if not raw:
        return 1 if limits.on_space() else 0
    if not raw.isdigit():
        raise LabError(f"{PROXY_HOPS_ENV}={raw!r}: the owner sets it to how many proxies in front of this app add to "
                       "X-Forwarded-For (a whole number: 0 = none, use the connection's address; a Space has 1).")
    return int(raw)


def client_address(forwarded: str | None, peer: str | None) -> str:
    """The requester's address, from the X-Forwarded-For header (`forwarded`) and the connection's (`peer`). With N
    trusted proxies the N-th entry from the right is the one the outermost of them saw; entries left of it are the
    client's own to write (one per request filled a queue's per-address cap), so they never count."""
    hops = proxy_hops()
    entries = [e.strip() for e in (forwarded or "").split(",") if e.strip()]
    if hops == 0 or not entries:
        return peer or ""
    return entries[-hops] if len(entries) >= hops else entries[0]


# ---- inputs that name server files ----------------------------------------------------------------------------------
def check_model_spec(spec: str, flag: str = "--model") -> None:
    """Hosted: a model is a Hub id, 'bundled' or 'tiny-random', never a folder on the server."""
    spec = (spec or "").strip()
    if not spec or spec in SPECIAL_SPECS:
        return
    local = spec.startswith(("/", "~", ".")) or Path(spec).exists() or (ROOT / spec).exists()
    if local or not HUB_ID.match(spec):
        raise LabError(f"{flag} {spec!r}: on this hosted app a model is a Hub id (owner/name), 'bundled' or "
                       "'tiny-random'; folders on the server are off limits.")


def check_source(run: Run, source: str, named: tuple[str, ...], flag: str) -> None:
    """Hosted: instructions come from a named set or a file uploaded into the run (its uploads/ folder)."""
    source = (source or "").strip()
    if source in named:
        return
    uploads = (run.path / "uploads").resolve()
    if uploads not in Path(source).expanduser().resolve().parents:
        raise LabError(f"{flag} {source!r}: on this hosted app instructions are {' or '.join(map(repr, named))}, or "
                       "a file you upload in the app; files on the server are off limits.")


def check_pairs(run: Run, pairs: str) -> None:
    """Hosted: training reads one of the run's pair sets, never a path."""
    have = run.pair_sources()
    if str(pairs or "").strip() not in have:
        raise LabError(f"--pairs {pairs!r}: on this hosted app training reads one of this run's pair sets "
                       f"({', '.join(have) or 'none yet: build pairs in the PairRM tab first'}); files on the server "
                       "are off limits.")


def check_adapters(run: Run, names: str, flag: str) -> None:
    """Hosted: adapters are names of this run's adapters, never folders."""
    have = run.adapters()
    for name in (n.strip() for n in (names or "").split(",") if n.strip()):
        if name not in have:
            raise LabError(f"{flag} {name!r}: on this hosted app pick adapters of this run "
                           f"({', '.join(have) or 'none yet'}); folders on the server are off limits.")


def check_ranker(spec: str, flag: str = "--ranker") -> None:
    if (spec or "").strip() not in KNOWN_RANKERS:
        raise LabError(f"{flag} {spec!r}: on this hosted app the ranker is one of {', '.join(KNOWN_RANKERS)}.")


# ---- the checks every job passes before it starts -------------------------------------------------------------------
def _count(source: str, n: int, seed: int = 0) -> int:
    return len(load_instructions(source, n or None, seed))


def _pairs_count(run: Run, pairs: str) -> int:
    return len(read_jsonl(resolve_pairs(run, pairs)))


def _model(run: Run, spec: str) -> str:
    """The model a stage will load: its --model, else the one that sampled the run ('' if neither)."""
    return (spec or "").strip() or (run.stage_settings("sample") or {}).get("model") or ""


def public_text(text: str) -> str:
    """A message as a hosted app shows it: no server path (the runs root, the lab's cache, the home folder) in it;
    off a hosted app, unchanged."""
    if not hosted() or not text:
        return text
    for path, shown in ((runs_root(), "runs"), (cache_dir(), "<cache>"), (Path.home(), "~")):
        text = text.replace(str(path), shown)
    return text


def model_specs(run: Run, cfg) -> list[str]:
    """The Hub models a stage's settings would load: its model (or the run's), a local judge's or scorer's model,
    a ranker. (An API judge's model name is the provider's, not a Hub repo.)"""
    specs = [_model(run, getattr(cfg, "model", "") or "")]
    if getattr(cfg, "backend", None) == "local" or getattr(cfg, "judge", None) == "local":
        specs.append(getattr(cfg, "judge_model", "") or getattr(cfg, "model", "") or "bundled")
    specs += [getattr(cfg, key, "") or "" for key in ("ranker", "pairrm", "reward")]
    return [s for s in specs if s]


def admit(stage: str, run_name: str, cfg) -> None:
    """Refuse a stage's settings (`cfg`: its settings dataclass, as `python -m lab` parsed them) that break the hosted
    rules or the caps, before anything is written. The app runs it before it queues a job, the CLI before the stage
    starts."""
    from lab.stages import BY_NAME  # the rows name these checks: imported when first asked, not at import

    check = BY_NAME[stage].admit if stage in BY_NAME else None
    if check is None:
        return
    run = Run.open(run_name)
    if hosted():
        check_writable(run.path)
    check(run, cfg)


def admit_sample(run: Run, cfg) -> None:
    if hosted():
        check_model_spec(cfg.model)
        check_source(run, cfg.instructions, ("bundled", "checks", "lima"), "--instructions")
        check_adapters(run, cfg.adapter, "--adapter")
    held = 0
    if limits.cap("run_instructions"):  # read the source only for a cap
        known = {i["id"] for i in run.read("instructions")}
        held = len(known | {i.id for i in load_instructions(cfg.instructions, cfg.n, cfg.seed)})
    limits.check_sample(cfg, held)


def admit_judge(run: Run, cfg) -> None:
    if hosted():
        allowed = {run.file("judge_prompt").resolve(), run.upload_path(".txt", "judge-prompt").resolve()}
        if cfg.prompt_file and Path(cfg.prompt_file).resolve() not in allowed:
            raise LabError("--prompt-file: on this hosted app the judge prompt is the one edited in the Judge tab.")
        if cfg.api_key_env:  # an owner's explicit choice on the command line, never a visitor's
            raise LabError("--api-key-env: on this hosted app a judge key is the app's own or the one you type.")
        if cfg.backend == "local":
            check_model_spec(cfg.model, "--model")
    calls = 0
    if limits.cap("judge_calls") and run.read("samples"):  # estimate the plan only for a cap
        given = not cfg.prompt_file or Path(cfg.prompt_file).is_file()  # the app writes it only once admitted
        calls = estimate(run, cfg, None if given else DEFAULT_TEMPLATE)["calls_to_make"]
    limits.check_judge(cfg, calls)


def admit_rank(run: Run, cfg) -> None:
    if hosted():
        check_ranker(cfg.ranker)
    pairs = sum(len(g.indices) * (len(g.indices) - 1) for g in groups(run, False)) if limits.cap("rank_pairs") else 0
    limits.check_rank(cfg, pairs)


def admit_score(run: Run, cfg) -> None:
    limits.check("batch", "--batch-size", cfg.batch_size)  # 0 (auto) is resolved within the cap
    limits.check("k", "--evaluations", cfg.evaluations)
    limits.check("new_tokens", "--judge-tokens", cfg.judge_tokens)


def admit_train(run: Run, cfg) -> None:
    if hosted():
        if cfg.report_to == "wandb":  # the app's W&B login is the owner's: a visitor's runs must not land there
            raise LabError("--report-to wandb: on this hosted app training reports to none, trackio or tensorboard.")
        check_pairs(run, cfg.pairs)
        check_adapters(run, cfg.init_adapter or "", "--init-adapter")
        check_model_spec(cfg.model)
    pairs = _pairs_count(run, cfg.pairs) if limits.cap("train_steps") else 0  # read the file only for a cap
    limits.check_train(cfg, pairs, _model(run, cfg.model))


def admit_compare(run: Run, cfg) -> None:
    if hosted():
        check_source(run, cfg.instructions, ("heldout", "checks-heldout", "bundled", "checks"), "--instructions")
        check_adapters(run, cfg.adapters, "--adapters")
        check_model_spec(cfg.model)
        for flag, spec in (("--pairrm", cfg.pairrm), ("--reward", cfg.reward)):
            if spec:
                check_ranker(spec, flag)
        if cfg.judge == "local":
            check_model_spec(cfg.judge_model, "--judge-model")
    adapters = len([a for a in cfg.adapters.split(",") if a.strip()] or run.adapters())
    limits.check_compare(cfg, _count(cfg.instructions, cfg.n) if limits.cap("n") else 0, _model(run, cfg.model),
                         adapters)


def admit_iterate(run: Run, cfg) -> None:
    if hosted():
        check_source(run, cfg.instructions, ("run", "bundled", "checks"), "--instructions")
        check_source(run, cfg.eval_instructions, ("heldout", "checks-heldout", "bundled", "checks"),
                     "--eval-instructions")
        check_adapters(run, cfg.start_adapter, "--start-adapter")
        check_model_spec(cfg.model)
    train_n = eval_n = 0
    if limits.cap("n") or limits.cap("train_steps"):  # read the instruction sources only for a cap
        own = len(run.read("instructions"))
        train_n = min(cfg.n or own, own) if cfg.instructions == "run" else _count(cfg.instructions, cfg.n, cfg.seed)
        eval_n = min(cfg.eval_n, _count(cfg.eval_instructions, 0)) if cfg.eval_n else 0
    limits.check_iterate(cfg, train_n, eval_n, _model(run, cfg.model))


def check_chat(run: Run | None, cfg, panes: tuple[str, ...] = ()) -> None:
    """A chat's rules (the app's Chat tab checks them itself: a chat only reads, so a shared run is fine; `run` None:
    the base model without a run): the run's own adapters, a Hub model, the new-token and model-size caps."""
    if hosted():
        adapters = ",".join(p for p in (cfg.adapter, *panes) if p and p != "base")
        if run is not None:
            check_adapters(run, adapters, "--adapter")
        check_model_spec(cfg.model)
    limits.check("new_tokens", "--max-new-tokens", cfg.max_new_tokens)
    limits.check_model(_model(run, cfg.model) if run is not None else cfg.model)


def admit_merge(run: Run, cfg) -> None:
    if hosted():
        check_adapters(run, cfg.adapter, "--adapter")
        check_model_spec(cfg.model)
    limits.check_model(_model(run, cfg.model))

