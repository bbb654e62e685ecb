"""Instruction sources -> `Instruction` records (the format of instructions.jsonl).

    {"id": str, "prompt": str, "source": str}

`id` is stable: the bundled sets keep their own ids; LIMA and user files get "p-" + the first 12 hex digits of the
prompt's SHA-1, so the same instruction keeps its id whatever file or order it came from (resume and duplicate
detection rely on it).

Sources:
  - `bundled`: assets/instructions-train.jsonl, written for this project (offline default)
  - `heldout`: assets/instructions-heldout.jsonl, new instructions for the comparison (never for training)
  - `lima`: GAIR/lima on the hub (gated: accept its terms and set HF_TOKEN). Filters: single-turn conversations
    only, prompts of 20-2,000 characters; N of them picked by a seeded shuffle, so the same N and seed give the same set
  - a file: .jsonl with a "prompt" field (and optionally an "id": a string or a whole number; two lines with the same
    id must hold the same prompt), .csv with a "prompt" column, or .txt with one instruction per line. Files are
    UTF-8, with or without a BOM (lab.store.read_user_text).
"""
from __future__ import annotations

import csv
import hashlib
import io
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.errors import LabError
from lab.store import ASSET_FILES, asset, iter_user_jsonl, read_user_text

BUNDLED = {kind: asset(kind) for kind in ASSET_FILES}  # "bundled" (training) and "heldout" (comparison)
LIMA_ID = "GAIR/lima"
LIMA_MIN_CHARS, LIMA_MAX_CHARS = 20, 2000


@dataclass(frozen=True)
class Instruction:
    id: str
    prompt: str
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_id(prompt: str) -> str:
    return "p-" + hashlib.sha1(prompt.strip().encode("utf-8")).hexdigest()[:12]


def _from_prompts(prompts: list[str], source: str, ids: list[str] | None = None) -> list[Instruction]:
    """Strip, drop exact duplicates (first one wins), refuse an empty result."""
    seen, out = set(), []
    for i, p in enumerate(prompts):
        p = (p or "").strip()
        if p and p not in seen:
            seen.add(p)
            out.append(Instruction(ids[i] if ids else prompt_id(p), p, source))
    if not out:
        raise LabError(f"{source}: no instructions found (the file is empty or every prompt is blank).")
    return out


def _record_id(obj: dict, prompt: str, path: Path, n: int) -> str:
    """A line's own "id" (a string or a whole number, compared as text: 1 and "1" are one id), else the prompt's."""
    raw = obj.get("id")
    if raw is None:
        return prompt_id(prompt)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
        raise LabError(f'{path}: line {n} has "id" {raw!r}: an id is a non-empty string or a whole number '
                       "(or leave it out and the lab makes one from the prompt).")
    return str(raw).strip()


def _read_jsonl(path: Path) -> list[Instruction]:
    prompts, ids, first = [], [], {}  # first: id -> (line, prompt) where it first appeared
    for n, obj in iter_user_jsonl(path, "Instruction file"):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise LabError(f'{path}: line {n} has no "prompt" text field. Each line must look like {{"prompt": "..."}}.')
        iid = _record_id(obj, obj["prompt"], path, n)
        line, prompt = first.setdefault(iid, (n, obj["prompt"].strip()))
        if prompt != obj["prompt"].strip():  # the judge would see one prompt with the other's responses
            raise LabError(f"{path}: lines {line} and {n} have the same id {iid!r} but different prompts: give each "
                           'instruction its own id (or leave the "id" fields out).')
        prompts.append(obj["prompt"])
        ids.append(iid)
    return _from_prompts(prompts, path.name, ids)


def _read_csv(path: Path) -> list[Instruction]:
    """The 'prompt' column; quoting errors (an unterminated quote would swallow every row after it) are refused."""
    reader = csv.DictReader(io.StringIO(read_user_text(path, "Instruction file"), newline=""), strict=True)
    start = 1  # the line the row being read starts on
    try:
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise LabError(f"{path}: no 'prompt' column (found: {', '.join(reader.fieldnames or []) or 'none'}). "
                           "Add a header row with a column named prompt.")
        prompts, start = [], reader.line_num + 1
        for row in reader:
            prompts.append(row["prompt"])
            start = reader.line_num + 1
    except csv.Error as e:
        if "end of data" in str(e):
            raise LabError(f"{path}: the quoted field that starts on line {start} is never closed, so every line after "
                           'it would become one prompt: add the closing quote (write a quote inside a field as "").'
                           ) from None
        raise LabError(f"{path}: line {start} is not valid CSV ({e}): quote fields that hold commas or "
                       'quotes, and write a quote inside a field as "".') from None
    return _from_prompts(prompts, path.name)


def read_file(path: str | Path) -> list[Instruction]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LabError(f"Instruction file {path} does not exist: give 'bundled', 'lima' or a path to a file.")
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix in (".txt", ""):
        return _from_prompts(read_user_text(path, "Instruction file").splitlines(), path.name)
    raise LabError(f"{path}: unsupported file type {path.suffix!r}: use .jsonl (a 'prompt' field), .csv (a 'prompt' "
                   "column) or .txt (one instruction per line).")


def load_lima(split: str = "train") -> list[Instruction]:
    """Single-turn LIMA prompts (needs the hub and an accepted licence)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(LIMA_ID, split=split)
    except Exception as e:  # datasets raises many types for gated/offline
        raise LabError(f"Could not load {LIMA_ID} ({type(e).__name__}). It is gated: accept its terms on the "
                       "Hugging Face Hub and set HF_TOKEN; offline, use --instructions bundled or a file.") from e
    prompts = [c[0] for c in ds["conversations"] if len(c) == 2 and LIMA_MIN_CHARS <= len(c[0]) <= LIMA_MAX_CHARS]
    return _from_prompts(prompts, "lima")


def load_instructions(source: str, n: int | None = None, seed: int = 0) -> list[Instruction]:
    """Up to n instructions from a source. Bundled sets and files keep their order (first n); LIMA is shuffled
    with `seed` first, because its order is not a sample."""
    source = (source or "").strip()
    if source in BUNDLED:
        items = _read_jsonl(BUNDLED[source])
        items = [Instruction(i.id, i.prompt, source) for i in items]
    elif source == "lima":
        items = load_lima()
        random.Random(seed).shuffle(items)
    else:
        items = read_file(source)
    return items[:n] if n else items
