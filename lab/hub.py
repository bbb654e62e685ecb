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
    model   <namespace>/<prefix>[-iter<k>]-<adapter>-merged   one per merged adapter (lab.merge: runs/<run>/merged/)
        config.json, model*.safetensors, tokenizer files, merge.json (as merged; local paths made public)
        README.md                                         model card (lab.cards.merged_card: base, adapter, merge)

Record format of push.jsonl (one line per repo pushed; the app shows these links):

    {"kind": "dataset" | "model" | "merged", "name": str, "repo_id": str, "url": str,
     "private": bool (as the Hub reports it),
     "commit": str, "folder": str, "time": str, "warning": str (only when a repo asked to be private is public)}

Tokens: one passed in memory (the app's visitor login), else $HF_TOKEN, else the login `hf auth login` saved. On any
hosted app (a Space, or LAB_HOSTED=1: lab.limits.hosted) only a passed token counts: the environment's HF_TOKEN and
the saved login belong to the owner, and pushing must use the visitor's account. There a push also writes only into
namespaces the token's account owns (its user name or one of its organisations, as whoami says), so a repo that
already exists elsewhere is never written into. A token is never written anywhere; before anything is uploaded
every staged file (parquet read as text) is checked for it, for the value of every credential variable in the
environment (credential_env_names) and for URLs with userinfo (user:password@host).

Local paths: a staged folder names no place on this machine (PublicPaths): a path inside the run becomes relative
to it, the bundled model's cache folder becomes its Hub id, a Hub cache folder its repo id, any other local path its
base name. This covers the parquet records, the adapter's JSON files and everything the cards show.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab import cards, efficiency, models
from lab.config import Settings, opt
from lab.errors import LabError
from lab.models import BUNDLED_HUB_ID
from lab.progress import Progress
from lab.judge_backends import KEY_ENV, TYPED_KEY_ENV
from lab.limits import hosted
from lab.store import MERGED_FILES, Run, adapter_file, append_jsonl, atomic_write_json, atomic_write_text, \
    build_folder, read_jsonl, runs_root

DEFAULT_ENDPOINT = "https://huggingface.co"
RAW_CONFIGS = ("samples", "judgments", "rankings", "spotcheck", "scores")  # record files shipped next to the pairs
SHARD = "train-00000-of-00001.parquet"  # the name `Dataset.push_to_hub` gives a single-shard split
NOT_UPLOADED = ("checkpoints", "checkpoint-*", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth",
                "runs", ".*", "*.tmp", "README.md")  # resumable state, pickles that may hold a hub_token, old card
PLACEHOLDER_NAMESPACE = "YOUR-HF-USERNAME"
REPO_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
HUB_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
CREDENTIAL_NAME = re.compile(r"(_API_KEY$|_TOKEN$|SECRET)", re.IGNORECASE)  # names that look like a credential
NOT_REWRITTEN = ("tokenizer.json", "vocab.json")  # vocabularies: their tokens ("/s", "/*") are text, not paths
# a URL with userinfo in a staged file (store.URL_USERINFO; its redacted form "scheme://***@" is fine)
# (RFC 3986's userinfo characters only, then a host: random bytes of a weights file matched "C://&<binary>@")
USERINFO_IN_FILE = re.compile(rb"(?i)\b[a-z][a-z0-9+.-]*://(?!\*\*\*@)[a-z0-9._~%!$&'()*+,;=:-]+@[a-z0-9.-]")


@dataclass
class PushConfig(Settings):
    namespace: str = opt("", "Hub user or organisation to push to (default: the owner of the token)")
    prefix: str = opt("", "start of every repo name (default: the run name): <prefix>-<source>, <prefix>-<adapter>")
    private: bool = opt(True, "create the repos private (--no-private makes them public)")
    datasets: bool = opt(True, "push each preference data set (pairs-<source>.jsonl, with samples and judgments)")
    adapters: bool = opt(True, "push each trained adapter with its model card")
    merged: bool = opt(True, "push each merged model (python -m lab merge) as a model repo of its own")
    only: str = opt("", "comma-separated pair sources / adapter names to push (default: all)")
    iterations: bool = opt(True, "also push the data sets and adapters of self-rewarding iterations")
    endpoint: str = opt("", "Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    dry_run: bool = opt(False, "write the folders that would be uploaded under <run>/hub/ and push nothing")

    def validate(self) -> "PushConfig":
        for label, value in (("--namespace", self.namespace), ("--prefix", self.prefix)):
            if value and not is_hub_name(value):
                raise LabError(f"{label} {value!r} is not a valid Hub name: use letters, digits, '-', '_' or '.', "
                               "starting with a letter or digit, without '--' or '..', not ending in '-', '.' or "
                               "'.git'.")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise LabError(f"--endpoint must be a URL such as https://huggingface.co (got {self.endpoint!r}).")
        if not (self.datasets or self.adapters or self.merged):
            raise LabError("Nothing to push: --no-datasets, --no-adapters and --no-merged were all given.")
        return self


@dataclass(frozen=True)
class Item:
    """One repo to push: a preference data set (`source` = pairs source), an adapter or a merged model (`source` =
    adapter name)."""

    kind: str  # "dataset" | "model" | "merged"
    run: Run  # the run (or iteration round) that holds it
    source: str
    name: str  # repo name without namespace

    def repo_id(self, namespace: str) -> str:
        return f"{namespace}/{self.name}"

    @property
    def repo_type(self) -> str:
        """The Hub's repo type: a merged model is a model repo like an adapter."""
        return "dataset" if self.kind == "dataset" else "model"

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
        if cfg.merged:
            items += [Item("merged", r, a, f"{prefix}{tag}-{a}-merged") for a in r.merged()]
    only = {n.strip() for n in cfg.only.split(",") if n.strip()}
    if only:
        items = [i for i in items if i.source in only or i.name in only]
    if not items:
        raise LabError(f"Nothing to push in {run.path}: build pairs (`python -m lab pairs`) or train an adapter "
                       "first" + (f", or check --only {cfg.only!r}" if only else "") + ".",
                       ui=f"Nothing to push in run {run.name}: build pairs (PairRM tab, Build pairs) or train an "
                       "adapter (Train tab) first" + (f", or check “Only these” ({cfg.only})" if only else "") + ".")
    for item in items:
        check_repo_name(item.name)
    return items


def is_hub_name(name: str) -> bool:
    """The Hub's rule for repo names and namespaces (users, organisations): 1-96 letters, digits, '-', '_', '.',
    starting with a letter or digit, no '--' or '..', not ending in '-', '.' or '.git'."""
    return (bool(REPO_NAME.match(name)) and "--" not in name and ".." not in name
            and not name.endswith((".git", "-", ".")))


def check_repo_name(name: str) -> str:
    """A repo name made from --prefix and a source / adapter name (is_hub_name's rule)."""
    if not is_hub_name(name):
        raise LabError(f"{name!r} is not a valid Hub repo name (at most 96 letters, digits, '-', '_', '.'; no '--' "
                       "or '..'): choose a shorter or simpler --prefix.")
    return name


def dataset_links(items: list[Item], namespace: str) -> dict[tuple[Path, str], str]:
    """(run path, pairs source) -> data set repo id, so a model card can link the data it was trained on."""
    return {(i.run.path, i.source): i.repo_id(namespace) for i in items if i.kind == "dataset"}


# ---- local paths -> what may be published --------------------------------------------------------------------------
ABS_PATH = re.compile(r"(?<![\w:/.~-])/[^\s\"'`<>|,;()\[\]{}]+")  # an absolute path inside a longer text


class PublicPaths:
    """Turns the local paths in what a push publishes into names that say nothing about this machine.

    A whole string that is an absolute path: inside `root` (the pushed run) -> relative to it ("." for the run);
    the bundled model's cache folder -> lab.models.BUNDLED_HUB_ID; a Hub cache folder (models--org--name) -> its
    repo id; any other path -> its base name. Inside a longer text (a warning, a message), paths under the run, the
    runs root, the lab cache, the home folder or the temp folder are replaced the same way."""

    def __init__(self, root: Path):
        self.root, self.bundled = root.resolve(), models.bundled_dir().resolve()
        local = [self.root, runs_root(), models.cache_dir(), Path.home(), Path(tempfile.gettempdir())]
        self.local = [str(p.resolve()) for p in local]

    def path(self, text: str) -> str:
        """One absolute path -> its public name."""
        p = Path(text)
        for base, name in ((self.bundled, lambda rest: BUNDLED_HUB_ID), (self.root, lambda rest: rest or ".")):
            if p == base or base in p.parents:
                return name(p.relative_to(base).as_posix() if p != base else "")
        hub = next((part for part in p.parts if part.startswith("models--")), None)
        if hub and len(hub.split("--")) == 3:
            return "/".join(hub.split("--")[1:])
        return p.name or text

    def text(self, text: str) -> str:
        if text.startswith("/") and "\n" not in text and len(text) < 4096 and not text.startswith("//"):
            return self.path(text.strip())
        return ABS_PATH.sub(lambda m: self.path(m.group()) if self._local(m.group()) else m.group(), text)

    def _local(self, path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.local)

    def data(self, obj: Any) -> Any:
        """Every string value (not the keys) of a JSON-like object, at any depth, made public."""
        if isinstance(obj, dict):
            return {k: self.data(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.data(v) for v in obj]
        return self.text(obj) if isinstance(obj, str) else obj


class PublicRun(Run):
    """A run as the cards see it: everything read from run.json and the record files has its paths made public."""

    def __init__(self, path: Path, paths: PublicPaths):
        super().__init__(path)
        self.paths = paths

    def settings(self) -> dict:
        return self.paths.data(super().settings())

    def read(self, kind: str) -> list[dict]:
        return self.paths.data(super().read(kind))


def publish_json_files(folder: Path, paths: PublicPaths) -> None:
    """Rewrite every JSON / JSONL file of a staged folder with its paths made public. Each is replaced by a new
    file (atomic_write_text renames one into place), so a hard-linked source in the run stays as it was."""
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name in NOT_REWRITTEN or f.suffix not in (".json", ".jsonl"):
            continue
        if f.suffix == ".json":
            atomic_write_json(f, paths.data(json.loads(f.read_text(encoding="utf-8"))))
        else:
            atomic_write_text(f, "".join(json.dumps(paths.data(r), ensure_ascii=False) + "\n" for r in read_jsonl(f)))


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


def stage_dataset(item: Item, folder: Path, namespace: str, raw: dict[str, list[dict]],
                  paths: PublicPaths) -> dict[str, int]:
    """Write the pairs and the raw record files (`raw`: kind -> records) as parquet configs plus the card, every
    local path in them made public (`paths`). Returns rows per config."""
    pairs = paths.data(read_jsonl(item.run.pairs_file(item.source)))
    if not pairs:
        raise LabError(f"{item.run.pairs_file(item.source)} holds no pairs: rebuild it with `python -m lab pairs` "
                       f"or leave it out with --only.", ui=f"{item.run.pairs_file(item.source).name} holds no pairs: "
                       "rebuild it (PairRM tab, Build pairs) or leave it out with “Only these”.")
    raw = paths.data(raw)
    rows = {"default": write_parquet(pairs, folder / "data" / SHARD)}
    for kind, records in raw.items():
        if records:
            rows[kind] = write_parquet(records, folder / kind / SHARD)
    view = PublicRun(item.run.path, paths)
    card = cards.dataset_card(item.repo_id(namespace), item.source, view, pairs, raw, rows)
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


def stage_model(item: Item, folder: Path, namespace: str, links: dict, paths: PublicPaths) -> None:
    """Copy the adapter (without resumable state or pickles), point its config at the base's Hub id, make every
    local path in its JSON files public (`paths`), write the card."""
    src = item.run.adapter_dir(item.source)
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns(*NOT_UPLOADED), dirs_exist_ok=True,
                    copy_function=_link_or_copy)
    state = cards.training_state(src, item.run)  # as recorded: the base's id and the data link are found from it
    base_id = cards.base_model_id(state, item.run)
    dataset_id = cards.trained_on(state, item.run, links)
    publish_json_files(folder, paths)
    config = json.loads(adapter_file(folder, "config").read_text(encoding="utf-8"))
    if base_id and base_id != config.get("base_model_name_or_path"):  # a local copy of a Hub model: load the Hub one
        atomic_write_json(adapter_file(folder, "config"), {**config, "base_model_name_or_path": base_id})
    card = cards.model_card(item.repo_id(namespace), item.source, PublicRun(item.run.path, paths), folder,
                            paths.data(state), dataset_id)
    atomic_write_text(adapter_file(folder, "card"), card)


def stage_merged(item: Item, folder: Path, namespace: str, links: dict, paths: PublicPaths) -> None:
    """Copy the merged checkpoint (weights hard-linked), make every local path in its JSON files public, write the
    card for its Hub name."""
    src = item.run.merged_dir(item.source)
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns(*NOT_UPLOADED), dirs_exist_ok=True,
                    copy_function=_link_or_copy)
    publish_json_files(folder, paths)
    adapter = item.run.adapter_dir(item.source)
    state = cards.training_state(adapter, item.run) if adapter.exists() else {}
    record = json.loads((folder / MERGED_FILES["record"]).read_text(encoding="utf-8"))
    card = cards.merged_card(item.repo_id(namespace), item.source, PublicRun(item.run.path, paths), folder,
                             paths.data(state), record, cards.trained_on(state, item.run, links))
    atomic_write_text(folder / MERGED_FILES["card"], card)


def read_raw(run: Run) -> dict[str, list[dict]]:
    """The raw record files that ship next to the pairs, read once per run (round) and push."""
    return {kind: run.read(kind) for kind in RAW_CONFIGS}


def stage(item: Item, namespace: str, links: dict, root: Run, raw: dict | None = None) -> Path:
    """Stage one repo under `<root run>/hub/<name>/` and return the folder."""
    target, paths = root.file("hub") / item.name, PublicPaths(root.path)
    if item.kind == "dataset":
        return build_folder(target, lambda tmp: stage_dataset(item, tmp, namespace, raw or read_raw(item.run), paths))
    if item.kind == "merged":
        return build_folder(target, lambda tmp: stage_merged(item, tmp, namespace, links, paths))
    return build_folder(target, lambda tmp: stage_model(item, tmp, namespace, links, paths))


# ---- tokens and secrets -------------------------------------------------------------------------------------------
def resolve_token(token: str | None = None) -> str:
    """The token to push with (see the module docstring for the order). Raises LabError when there is none."""
    if token:
        return token
    if hosted():  # never the owner's: not $HF_TOKEN, not the saved `hf auth login`, not a cache
        raise LabError(f"Sign in with Hugging Face (the button on the Share tab) to push: {_HOSTED_PUSH}")
    from huggingface_hub import get_token

    found = get_token()  # $HF_TOKEN, else the login saved by `hf auth login`
    if not found:
        raise LabError("No Hugging Face token: create one with write access at https://huggingface.co/settings/tokens "
                       "and set HF_TOKEN (or run `hf auth login`); or use --dry-run to only stage the folders.")
    return found


_HOSTED_PUSH = ("on a hosted app the lab pushes with your own account, never the app owner's token (a Space without "
                "sign-in cannot push: run the lab on your own machine).")


def check_namespace_owned(api, namespace: str, token: str) -> None:
    """On a hosted app, refuse a namespace the visitor's account does not own (its user name or one of its
    organisations): the Hub refuses it too, but nothing should rely on the Hub alone to keep a visitor out of
    someone else's repos."""
    if not hosted():
        return
    me = _call("asking whose token this is", token, api.whoami)
    owned = {me.get("name"), *(o.get("name") for o in me.get("orgs") or [])} - {None}
    if namespace not in owned:
        raise LabError(f"Namespace {namespace!r} is not yours: on a hosted app you push only into your own account "
                       f"or your organisations ({', '.join(sorted(owned))}). Nothing was uploaded.")


def credential_env_names(environ: dict | None = None) -> list[str]:
    """The environment variables whose values must never be published: the key variable of every judge backend
    (lab.judge_backends.KEY_ENV, and TYPED_KEY_ENV for a key typed in the app), the Hub token variables, and every
    variable named like a credential (*_API_KEY, *_TOKEN, *SECRET*), whoever reads it."""
    environ = os.environ if environ is None else environ
    named = {k for k in environ if CREDENTIAL_NAME.search(k)}
    return sorted({*KEY_ENV.values(), *TYPED_KEY_ENV.values(), *HUB_TOKEN_ENV} | named)


def _secrets_in_use(token: str | None) -> dict[str, str]:
    """{where it comes from: value} of every credential in use; the names go into messages, never the values."""
    return {"the push token": token or "", **{f"${k}": os.environ.get(k, "") for k in credential_env_names()}}


def _scannable(path: Path) -> bytes:
    """A staged file's bytes, and for parquet its values as text too (compressed pages would hide a key); of a
    safetensors file only its JSON header (names, shapes, metadata): the rest is numbers, which hold no text but
    match any byte pattern somewhere in gigabytes."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return f.read(min(size, 100_000_000))
    data = path.read_bytes()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        data += json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str).encode()
    return data


def check_no_secrets(folder: Path, secrets: dict[str, str]) -> None:
    """Refuse to upload a folder in which any file holds a credential in use (`secrets`: where it comes from ->
    value; values under 8 characters are not searched) or a URL with userinfo (user:password@host)."""
    needles = {name: v.encode() for name, v in secrets.items() if v and len(v) >= 8}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = _scannable(path)
        found = next((name for name, v in needles.items() if v in data), None)
        if found:
            raise LabError(f"{path} contains a token or API key (the value of {found}): remove it from the run's "
                           "files before pushing (nothing was uploaded).")
        if USERINFO_IN_FILE.search(data):
            raise LabError(f"{path} contains a URL with a user name or password (scheme://user:...@host): remove "
                           "it from the run's files before pushing (nothing was uploaded).")


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
    repo_id, repo_type = item.repo_id(namespace), item.repo_type
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
    with run.lock("push"), efficiency.measure(run, "push"):
        return _push_locked(run, cfg, token, progress)


def _push_locked(run: Run, cfg: PushConfig, token: str | None, progress: Progress | None) -> dict:
    progress = progress or Progress("push")
    items = plan(run, cfg)
    token = None if cfg.dry_run else resolve_token(token)
    api = None if cfg.dry_run else hub_api(cfg, token)
    namespace = namespace_of(api, cfg, token) if api else (cfg.namespace or PLACEHOLDER_NAMESPACE)
    if api:
        check_namespace_owned(api, namespace, token)
    folders = stage_all(run, items, namespace, _secrets_in_use(token), progress)
    if cfg.dry_run:
        repos = [_staged(item, folder, cfg, namespace) for item, folder in zip(items, folders)]
    else:
        repos = upload_all(run, api, items, folders, namespace, cfg.private, token, progress)
    progress.close()
    run.record_stage("push", cfg.to_dict())
    return {"dry_run": cfg.dry_run, "namespace": namespace, "repos": repos}


def stage_all(run: Run, items: list[Item], namespace: str, secrets: dict[str, str], progress: Progress
              ) -> list[Path]:
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
    if hosted():  # the owner's token is never a visitor's: nothing to show
        return ""
    from huggingface_hub import get_token

    return "HF_TOKEN / the saved `hf auth login` on this machine" if get_token() else ""


def run(run: Run, cfg: PushConfig, progress: Progress | None = None) -> dict:
    """The push stage in the stages' shape."""
    return push_run(run, cfg, progress=progress)
