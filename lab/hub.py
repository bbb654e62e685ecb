"""Push a run's preference data sets and adapters to the Hugging Face Hub, each with a card that says how it was made.

Every repo is first staged as a folder, `runs/<run>/hub/<repo name>/`, and that folder is what gets uploaded (one
`HfApi.upload_folder` call): `push --dry-run` stops after staging, so it shows byte for byte what would go up
(give `--namespace` for the links in the cards to be final too).

    dataset <namespace>/<prefix>[-iter<k>]-<source>     one per pairs-<source>.jsonl
        data/train-00000-of-00001.parquet                 config "default": the pairs (prompt/chosen/rejected/meta)
        samples/train-00000-of-00001.parquet              config "samples": every sampled response
        judgments/, rankings/, spotcheck/, scores/        one config per raw record file the run (round) holds
        README.md                                         data set card (YAML `configs:` + how it was made)
    model   <namespace>/<prefix>[-iter<k>]-<adapter>    one per complete adapter
        adapter_config.json, adapter_model.safetensors, tokenizer files, metrics.jsonl, settings ... (as trained;
        base_model_name_or_path set to the Hub id of the base where one is known; no checkpoints, no pickles)
        README.md                                         model card (base, data set link, every parameter, metrics)

Record format of push.jsonl (one line per repo pushed; the app shows these links):

    {"kind": "dataset" | "model", "name": str, "repo_id": str, "url": str, "private": bool (as the Hub reports it),
     "commit": str, "folder": str, "time": str, "warning": str (only when a repo asked to be private is public)}

Tokens: one passed in memory (the app's visitor login), else $HF_TOKEN, else the login `hf auth login` saved. On a
Space ($SPACE_ID or SYSTEM=spaces set) only a passed token counts: the Space's own HF_TOKEN secret belongs to its
owner, and pushing must use the visitor's account. A token is never written anywhere; every staged file is checked
for it (and for the judge API keys in the environment) before anything is uploaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import cards
from lab.config import PushConfig
from lab.errors import LabError
from lab.progress import Progress
from lab.store import Run, append_jsonl, atomic_write_json, atomic_write_text, build_folder, read_jsonl

DEFAULT_ENDPOINT = "https://huggingface.co"
RAW_CONFIGS = ("samples", "judgments", "rankings", "spotcheck", "scores")  # record files shipped next to the pairs
SHARD = "train-00000-of-00001.parquet"  # the name `Dataset.push_to_hub` gives a single-shard split
NOT_UPLOADED = ("checkpoints", "checkpoint-*", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth",
                "runs", ".*", "*.tmp", "README.md")  # resumable state, pickles that may hold a hub_token, old card
PLACEHOLDER_NAMESPACE = "YOUR-HF-USERNAME"
REPO_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
SECRET_ENV = ("HF_TOKEN", "GROQ_API_KEY", "OPENAI_API_KEY", "HUGGING_FACE_HUB_TOKEN")


@dataclass(frozen=True)
class Item:
    """One repo to push: a preference data set (`source` = pairs source) or an adapter (`source` = adapter name)."""

    kind: str  # "dataset" | "model"
    run: Run  # the run (or iteration round) that holds it
    source: str
    name: str  # repo name without namespace

    def repo_id(self, namespace: str) -> str:
        return f"{namespace}/{self.name}"

    def url(self, endpoint: str, namespace: str) -> str:
        kind = "datasets/" if self.kind == "dataset" else ""
        return f"{endpoint.rstrip('/')}/{kind}{self.repo_id(namespace)}"


# ---- what to push -------------------------------------------------------------------------------------------------
def plan(run: Run, cfg: PushConfig) -> list[Item]:
    """Every data set and adapter of the run (and of its iterations) that the settings select."""
    rounds = [(run, "")] + ([(run.iteration(k), f"-iter{k}") for k in run.iterations()] if cfg.iterations else [])
    prefix = cfg.prefix or run.name
    items = []
    for r, tag in rounds:
        if cfg.datasets:
            items += [Item("dataset", r, s, f"{prefix}{tag}-{s}") for s in r.pair_sources()]
        if cfg.adapters:
            items += [Item("model", r, a, f"{prefix}{tag}-{a}") for a in r.adapters()]
    only = {n.strip() for n in cfg.only.split(",") if n.strip()}
    if only:
        items = [i for i in items if i.source in only or i.name in only]
    if not items:
        raise LabError(f"Nothing to push in {run.path}: build pairs (`python -m lab pairs`) or train an adapter "
                       "first" + (f", or check --only {cfg.only!r}" if only else "") + ".")
    for item in items:
        check_repo_name(item.name)
    return items


def check_repo_name(name: str) -> str:
    """The Hub's rule for repo names: 1-96 letters, digits, '-', '_', '.', no '--' or '..', not ending in '.git'."""
    if not REPO_NAME.match(name) or "--" in name or ".." in name or name.endswith((".git", "-", ".")):
        raise LabError(f"{name!r} is not a valid Hub repo name (at most 96 letters, digits, '-', '_', '.'; no '--' "
                       "or '..'): choose a shorter or simpler --prefix.")
    return name


def dataset_links(items: list[Item], namespace: str) -> dict[tuple[Path, str], str]:
    """(run path, pairs source) -> data set repo id, so a model card can link the data it was trained on."""
    return {(i.run.path, i.source): i.repo_id(namespace) for i in items if i.kind == "dataset"}


# ---- staging: the exact folders that get uploaded -----------------------------------------------------------------
def write_parquet(records: list[dict], path: Path) -> int:
    """Records -> one parquet shard through `datasets` (nested fields stay nested; fields of mixed type become Json).

    Every key of every record becomes a column (`Dataset.from_list` would keep only the first record's keys).
    """
    import datasets

    keys = list(dict.fromkeys(k for r in records for k in r))
    table = datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys}, on_mixed_types="use_json")
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    try:
        table.to_parquet(str(path))
    finally:
        datasets.enable_progress_bars()
    return len(records)


def stage_dataset(item: Item, folder: Path, namespace: str, raw: dict[str, list[dict]]) -> dict[str, int]:
    """Write the pairs and the raw record files (`raw`: kind -> records) as parquet configs plus the card.

    Returns rows per config."""
    pairs = read_jsonl(item.run.pairs_file(item.source))
    if not pairs:
        raise LabError(f"{item.run.pairs_file(item.source)} holds no pairs: rebuild it with `python -m lab pairs` "
                       f"or leave it out with --only.")
    rows = {"default": write_parquet(pairs, folder / "data" / SHARD)}
    for kind, records in raw.items():
        if records:
            rows[kind] = write_parquet(records, folder / kind / SHARD)
    card = cards.dataset_card(item.repo_id(namespace), item.source, item.run, pairs, raw, rows)
    atomic_write_text(folder / "README.md", card)
    return rows


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link weights into the staging folder (no second copy of a large file); copy across file systems.

    Files the lab rewrites (adapter_config.json here) are replaced by renaming a new file into place, which leaves
    the source untouched. The staging is rebuilt at every push, so it never goes up stale."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_model(item: Item, folder: Path, namespace: str, links: dict) -> None:
    """Copy the adapter (without resumable state or pickles), point its config at the base's Hub id, write the card."""
    src = item.run.adapter_dir(item.source)
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns(*NOT_UPLOADED), dirs_exist_ok=True,
                    copy_function=_link_or_copy)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    state = cards.training_state(src, item.run)
    base_id = cards.base_model_id(state, item.run)
    if base_id and base_id != config.get("base_model_name_or_path"):  # a local copy of a Hub model: load the Hub one
        atomic_write_json(folder / "adapter_config.json", {**config, "base_model_name_or_path": base_id})
    card = cards.model_card(item.repo_id(namespace), item.source, item.run, src, config, state, base_id,
                            cards.trained_on(state, item.run, links))
    atomic_write_text(folder / "README.md", card)


def read_raw(run: Run) -> dict[str, list[dict]]:
    """The raw record files that ship next to the pairs, read once per run (round) and push."""
    return {kind: run.read(kind) for kind in RAW_CONFIGS}


def stage(item: Item, namespace: str, links: dict, root: Run, raw: dict | None = None) -> Path:
    """Stage one repo under `<root run>/hub/<name>/` and return the folder."""
    target = root.file("hub") / item.name
    if item.kind == "dataset":
        return build_folder(target, lambda tmp: stage_dataset(item, tmp, namespace, raw or read_raw(item.run)))
    return build_folder(target, lambda tmp: stage_model(item, tmp, namespace, links))


# ---- tokens and secrets -------------------------------------------------------------------------------------------
def on_space() -> bool:
    """True inside a Hugging Face Space (the Hub sets SPACE_ID and SYSTEM=spaces there)."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SYSTEM") == "spaces"


def resolve_token(token: str | None = None) -> str:
    """The token to push with (see the module docstring for the order). Raises LabError when there is none."""
    if token:
        return token
    if on_space():
        raise LabError("Sign in with Hugging Face (the button on the Share tab) to push: on a Space the lab pushes "
                       "with your own account, never the Space owner's token.")
    from huggingface_hub import get_token

    found = get_token()  # $HF_TOKEN, else the login saved by `hf auth login`
    if not found:
        raise LabError("No Hugging Face token: create one with write access at https://huggingface.co/settings/tokens "
                       "and set HF_TOKEN (or run `hf auth login`); or use --dry-run to only stage the folders.")
    return found


def check_no_secrets(folder: Path, secrets: list[str]) -> None:
    """Refuse to upload a folder in which any byte sequence equals a token or API key in use."""
    needles = [s.encode() for s in secrets if s and len(s) >= 8]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n in data for n in needles):
            raise LabError(f"{path} contains a token or API key: remove it from the run's files before pushing "
                           "(nothing was uploaded).")


def _secrets_in_use(token: str | None) -> list[str]:
    return [token or ""] + [os.environ.get(k, "") for k in SECRET_ENV]


# ---- the Hub ------------------------------------------------------------------------------------------------------
def endpoint_of(cfg: PushConfig) -> str:
    return (cfg.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _hub_error(err: Exception, what: str, token: str) -> LabError:
    """A Hub failure -> what the person should do. The token is cut out of any text that echoes it."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    detail = str(err).replace(token, "***").splitlines()[0][:300] if str(err) else type(err).__name__
    if type(err).__name__ == "OfflineModeIsEnabled":
        return LabError("HF_HUB_OFFLINE is set: unset it to push, or use --dry-run to only stage the folders.")
    if status == 401:
        return LabError(f"The Hub refused the token while {what}: it is invalid or expired. Create a token with "
                        "write access at https://huggingface.co/settings/tokens and set HF_TOKEN.")
    if status == 403:
        return LabError(f"No permission while {what}: the token needs write access to that namespace "
                        f"(a fine-grained token must allow 'write' on it). Hub said: {detail}")
    if status is None:
        return LabError(f"Could not reach the Hub while {what} ({type(err).__name__}): check the connection or "
                        f"--endpoint. Details: {detail}")
    return LabError(f"The Hub answered {status} while {what}: {detail}")


def _call(what: str, token: str, fn: Callable, *args, **kwargs):
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return fn(*args, **kwargs)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as e:
        raise _hub_error(e, what, token) from None
    except Exception as e:  # httpx transport errors (connection refused, timeouts) are not OSError
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise _hub_error(e, what, token) from None
        raise


def hub_api(cfg: PushConfig, token: str):
    """An HfApi bound to the endpoint and to this token only (no fallback to any other login)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint_of(cfg), token=token, library_name="preference-lab")


def namespace_of(api, cfg: PushConfig, token: str) -> str:
    if cfg.namespace:
        return cfg.namespace
    return _call("asking whose token this is", token, api.whoami)["name"]


def upload(api, item: Item, folder: Path, namespace: str, private: bool, token: str) -> dict:
    """Create the repo (private unless asked otherwise; an existing repo keeps its visibility) and commit the folder."""
    repo_id, repo_type = item.repo_id(namespace), item.kind
    url = _call(f"creating {repo_id}", token, api.create_repo, repo_id, repo_type=repo_type, private=private,
                exist_ok=True)
    commit = _call(f"uploading {folder}", token, api.upload_folder, repo_id=repo_id, repo_type=repo_type,
                   folder_path=str(folder), commit_message=f"Preference Lab: {item.kind} {item.name}")
    is_private = bool(_call(f"reading {repo_id}", token, api.repo_info, repo_id, repo_type=repo_type).private)
    record = {"kind": item.kind, "name": item.name, "repo_id": repo_id, "url": str(url), "private": is_private,
              "commit": getattr(commit, "oid", None) or "", "folder": str(folder),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if private and not is_private:  # create_repo(exist_ok=True) leaves an existing repo's visibility alone
        record["warning"] = f"{repo_id} already existed and is PUBLIC: make it private in its settings on the Hub."
    return record


# ---- the stage ----------------------------------------------------------------------------------------------------
def push_run(run: Run, cfg: PushConfig, token: str | None = None, progress: Progress | None = None) -> dict:
    """Stage every selected repo and (unless dry_run) push it. Returns {"dry_run", "namespace", "repos": [...]}.

    Everything is staged and checked for secrets before the first upload, so a bad file stops the push before
    anything leaves the machine. Each pushed repo is appended to push.jsonl as soon as it is up. Holds the run's
    "push" lock: a second push (or dry run) of the run is refused, not staged over the first.
    """
    cfg.validate()
    with run.lock("push"):
        return _push_locked(run, cfg, token, progress)


def _push_locked(run: Run, cfg: PushConfig, token: str | None, progress: Progress | None) -> dict:
    progress = progress or Progress("push")
    items = plan(run, cfg)
    token = None if cfg.dry_run else resolve_token(token)
    api = None if cfg.dry_run else hub_api(cfg, token)
    namespace = namespace_of(api, cfg, token) if api else (cfg.namespace or PLACEHOLDER_NAMESPACE)
    folders = stage_all(run, items, namespace, _secrets_in_use(token), progress)
    if cfg.dry_run:
        repos = [_staged(item, folder, cfg, namespace) for item, folder in zip(items, folders)]
    else:
        repos = upload_all(run, api, items, folders, namespace, cfg.private, token, progress)
    progress.close()
    run.record_stage("push", cfg.to_dict())
    return {"dry_run": cfg.dry_run, "namespace": namespace, "repos": repos}


def stage_all(run: Run, items: list[Item], namespace: str, secrets: list[str], progress: Progress) -> list[Path]:
    links = dataset_links(items, namespace)
    folders, raws = [], {}
    for n, item in enumerate(items):
        progress.check_stop()
        progress.update(n, len(items), "stage", repo=item.name)
        if item.kind == "dataset" and item.run.path not in raws:
            raws[item.run.path] = read_raw(item.run)
        folders.append(stage(item, namespace, links, run, raws.get(item.run.path)))
        check_no_secrets(folders[-1], secrets)
    progress.update(len(items), len(items), "stage")
    return folders


def upload_all(run: Run, api, items: list[Item], folders: list[Path], namespace: str, private: bool, token: str,
               progress: Progress) -> list[dict]:
    repos = []
    for n, (item, folder) in enumerate(zip(items, folders)):
        progress.check_stop()
        progress.update(n, len(items), "upload", repo=item.name)
        repos.append(upload(api, item, folder, namespace, private, token))
        append_jsonl(run.file("push"), [repos[-1]])
    progress.update(len(items), len(items), "upload")
    return repos


def _staged(item: Item, folder: Path, cfg: PushConfig, namespace: str) -> dict:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return {"kind": item.kind, "name": item.name, "repo_id": item.repo_id(namespace),
            "url": item.url(endpoint_of(cfg), namespace), "private": cfg.private, "folder": str(folder), "files": files}


def pushed(run: Run) -> list[dict]:
    """The push.jsonl records, the newest per repo last (for the app's list of links)."""
    latest = {r["repo_id"]: r for r in run.read("push")}
    return list(latest.values())



def staged(run: Run) -> list[str]:
    """Names of the repo folders staged under <run>/hub/ (by the last push or dry run)."""
    root = run.file("hub")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def token_source(token: str | None = None) -> str:
    """Where a push would take its token from, in words (never the token): for the app to show before a push."""
    if token:
        return "your Hugging Face sign-in"
    if on_space():
        return ""
    from huggingface_hub import get_token

    return "HF_TOKEN / the saved `hf auth login` on this machine" if get_token() else ""
