"""Instruction sources -> `Instruction` records (the format of instructions.jsonl).

    {"id": str, "prompt": str, "source": str,
     "instruction_id_list": [str], "kwargs": [dict]}   # only on verifiable instructions: IFEval's checks (lab.checks)

`id` is stable: the bundled sets keep their own ids; LIMA and user files get "p-" + the first 12 hex digits of the
prompt's SHA-1, so the same instruction keeps its id whatever file or order it came from (resume and duplicate
detection rely on it).

Sources:
  - `bundled`: assets/instructions-train.jsonl, written for this project (offline default)
  - `heldout`: assets/instructions-heldout.jsonl, new instructions for the comparison (never for training)
  - `checks` / `checks-heldout`: assets/checks-train.jsonl / checks-heldout.jsonl, verifiable instructions that carry
    IFEval checks (written by scripts/make_checks_set.py; the held-out set's tasks never appear in training)
  - `lima`: GAIR/lima on the hub (gated: accept its terms and set HF_TOKEN). Filters: single-turn conversations
    only, prompts of 20-2,000 characters; N of them picked by a seeded shuffle, so the same N and seed give the same set
  - a file: .jsonl with a "prompt" field (and optionally an "id": a string or a whole number; two lines with the same
    id must hold the same prompt), .csv with a "prompt" column, or .txt with one instruction per line. Files are
    UTF-8, with or without a BOM (lab.store.read_user_text).
  - a table: a .parquet file, an Arrow .arrow file (IPC file or stream, as `datasets` caches them), or a folder a
    `datasets` Dataset / DatasetDict was saved to (`save_to_disk`; its "train" split, or its only one);
  - `hub:owner/name` or `hub:owner/name:split` (default split "train"): a data set on the Hugging Face Hub, loaded
    with `datasets.load_dataset` (gated sets need HF_TOKEN).
The instruction is the `column` given (SampleConfig.instruction_column: a field of .jsonl lines, a column of a .csv
or a table), else the first of PROMPT_COLUMNS a file has. A column of text holds instructions; a column of
conversations (LIMA's `conversations`: a list of turns as strings; or chat messages, dicts with role / content, or
ShareGPT's from / value) gives its first user turn, so a downloaded LIMA file (train.jsonl, or its parquet) reads as
it is. Tables and the hub get ids from the prompt ("p-..."), like other files.
Verifiable instructions: a .jsonl line, a table row or a hub row (`hub:google/IFEval`) with IFEval's
`instruction_id_list` and `kwargs` keeps them; they are checked against IFEval's checkers when read (lab.checks).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lab import checks, limits
from lab.errors import LabError, ui_text
from lab.models import HUB_ID
from lab.store import ASSET_FILES, asset, iter_user_jsonl, read_user_text

BUNDLED = {kind: asset(kind) for kind in ASSET_FILES}  # "bundled" (training) and "heldout" (comparison)
PROMPT_COLUMNS = ("prompt", "instruction", "conversations", "messages")  # looked for in this order
TABLE_SUFFIXES = (".parquet", ".arrow")
HUB_PREFIX = "hub:"
USER_ROLES = ("user", "human")
LIMA_ID = "GAIR/lima"
LIMA_MIN_CHARS, LIMA_MAX_CHARS = 20, 2000


@dataclass(frozen=True)
class Instruction:
    id: str
    prompt: str
    source: str
    instruction_id_list: list[str] | None = None  # IFEval's checks (lab.checks), only on verifiable instructions
    kwargs: list[dict] | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def checked(self, where: str) -> "Instruction":
        """This instruction with its check fields validated (LabError naming `where` otherwise)."""
        if self.instruction_id_list is None:
            return self
        types, kwargs = checks.validate(self.instruction_id_list, self.kwargs, self.prompt, where)
        return replace(self, instruction_id_list=types, kwargs=kwargs)


def prompt_id(prompt: str) -> str:
    return "p-" + hashlib.sha1(prompt.strip().encode("utf-8")).hexdigest()[:12]


def _from_prompts(prompts: list[str], source: str, ids: list[str] | None = None,
                  fields: list[dict] | None = None) -> list[Instruction]:
    """Strip, drop exact duplicates (first one wins), refuse an empty result, and more rows or a longer instruction
    than the owner's caps (lab.limits: a hosted app's defaults). `fields`: each prompt's check fields ({} for none;
    lab.checks.CHECK_FIELDS), validated here."""
    limits.check_decoded(source, len(prompts), 0)
    limits.check_instruction_length(source, [p for p in prompts if isinstance(p, str)])
    seen, out = set(), []
    for i, p in enumerate(prompts):
        p = (p or "").strip()
        if p and p not in seen:
            seen.add(p)
            item = Instruction(ids[i] if ids else prompt_id(p), p, source, **(fields[i] if fields else {}))
            out.append(item.checked(f"{source}, instruction {i + 1}"))
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


def first_turn(value, where: str) -> str:
    """The instruction in one cell: text as it is; a conversation's first user turn (LIMA: a list of strings, the
    first is the user's; chat messages: the first with role user; ShareGPT: from human)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value:
        turns = [t for t in value if not isinstance(t, dict) or (t.get("role") or t.get("from")) in USER_ROLES]
        turn = turns[0] if turns else None
        text = turn.get("content", turn.get("value")) if isinstance(turn, dict) else turn
        if isinstance(text, str):
            return text
    raise LabError(f"{where} holds {str(value)[:80]!r}: an instruction is a text, or a conversation (a list of turns) "
                   "whose first user turn is one. Pick another column with --instruction-column.")


def pick_column(names: list[str], column: str, where: str) -> str:
    """The column to read: `column` if given (it must exist), else the first of PROMPT_COLUMNS there."""
    if column:
        if column not in names:
            raise LabError(f"{where} has no column {column!r}; its columns are {', '.join(names) or 'none'}: pass one "
                           "of them as --instruction-column.")
        return column
    found = next((c for c in PROMPT_COLUMNS if c in names), None)
    if found is None:
        raise LabError(f"{where} has none of the columns {', '.join(PROMPT_COLUMNS)} (its columns: "
                       f"{', '.join(names) or 'none'}): pass the one holding the instructions as --instruction-column.")
    return found


def _read_jsonl(path: Path, column: str = "") -> list[Instruction]:
    prompts, ids, fields, first = [], [], [], {}  # first: id -> (line, prompt) where it first appeared
    for n, obj in iter_user_jsonl(path, "Instruction file"):
        if not isinstance(obj, dict):
            raise LabError(f'{path}: line {n} is not an object. Each line must look like {{"prompt": "..."}}.')
        if not column and not isinstance(obj.get("prompt"), str) and not any(c in obj for c in PROMPT_COLUMNS):
            raise LabError(f'{path}: line {n} has no "prompt" text field. Each line must look like {{"prompt": "..."}} '
                           '(or name its field with --instruction-column).')
        field = pick_column(list(obj), column, f"{path}: line {n}")
        text = first_turn(obj[field], f"{path}: line {n}, field {field!r},")
        iid = _record_id(obj, text, path, n)
        line, prompt = first.setdefault(iid, (n, text.strip()))
        if prompt != text.strip():  # the judge would see one prompt with the other's responses
            raise LabError(f"{path}: lines {line} and {n} have the same id {iid!r} but different prompts: give each "
                           'instruction its own id (or leave the "id" fields out).')
        prompts.append(text)
        ids.append(iid)
        fields.append(checks.fields_of(obj))
    return _from_prompts(prompts, path.name, ids, fields)


def _read_csv(path: Path, column: str = "") -> list[Instruction]:
    """The 'prompt' column (or `column`); quoting errors (an unterminated quote would swallow every row after it) are
    refused."""
    reader = csv.DictReader(io.StringIO(read_user_text(path, "Instruction file"), newline=""), strict=True)
    start, name = 1, column or "prompt"  # the line the row being read starts on
    try:
        if not reader.fieldnames or name not in reader.fieldnames:
            found = ", ".join(reader.fieldnames or []) or "none"
            fix = (f"pass one of them as --instruction-column (not {column!r})" if column else
                   f"add a header row with a column named {name}, or pass the column as --instruction-column")
            raise LabError(f"{path}: no {name!r} column (found: {found}): {fix}.")
        prompts, start = [], reader.line_num + 1
        for row in reader:
            prompts.append(row[name])
            start = reader.line_num + 1
    except csv.Error as e:
        if "end of data" in str(e):
            raise LabError(f"{path}: the quoted field that starts on line {start} is never closed, so every line after "
                           'it would become one prompt: add the closing quote (write a quote inside a field as "").'
                           ) from None
        raise LabError(f"{path}: line {start} is not valid CSV ({e}): quote fields that hold commas or "
                       'quotes, and write a quote inside a field as "".') from None
    return _from_prompts(prompts, path.name)


def read_file(path: str | Path, column: str = "") -> list[Instruction]:
    """Instructions from a file or a saved `datasets` folder (the formats in the module docstring)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _from_table(_saved_dataset(path), column, str(path), path.name)
    if not path.is_file():
        raise LabError(f"Instruction file {path} does not exist: give 'bundled', 'lima', hub:owner/name, or a path to "
                       "a file or a saved data set folder.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, column)
    if suffix == ".csv":
        return _read_csv(path, column)
    if suffix in TABLE_SUFFIXES:
        return _from_table(_read_table(path), column, str(path), path.name)
    if suffix in (".txt", ""):
        return _from_prompts(read_user_text(path, "Instruction file").splitlines(), path.name)
    raise LabError(f"{path}: unsupported file type {path.suffix!r}: use .jsonl (a 'prompt' field), .csv (a 'prompt' "
                   "column), .txt (one instruction per line), .parquet or .arrow (a table), or a saved data set "
                   "folder.")


# ---- tables: parquet, arrow, saved data sets, the hub ---------------------------------------------------------------
def _from_table(table, column: str, where: str, source: str) -> list[Instruction]:
    """Instructions from an Arrow table or a `datasets` Dataset (both have column_names and column(name))."""
    name = pick_column(list(table.column_names), column, where)
    column_of = (lambda c: table[c]) if hasattr(table, "features") else (lambda c: table.column(c).to_pylist())
    values = column_of(name)
    fields = None
    if all(c in table.column_names for c in checks.CHECK_FIELDS):  # IFEval's format (google/IFEval)
        fields = [checks.fields_of(dict(zip(checks.CHECK_FIELDS, row)))
                  for row in zip(*map(column_of, checks.CHECK_FIELDS))]
    return _from_prompts([first_turn(v, f"{where}, row {i + 1} of column {name!r},") for i, v in enumerate(values)],
                         source, fields=fields)


def _read_table(path: Path):
    """A .parquet file, or an .arrow file in Arrow's IPC file or stream format, as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            meta = pq.ParquetFile(path).metadata  # rows and decoded sizes, before any data is read
            limits.check_decoded(path.name, meta.num_rows,
                                 sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                source.seek(0)
                reader = batches = pa.ipc.open_stream(source)
            return _bounded_batches(path, reader.schema, batches)
    except (pa.ArrowInvalid, OSError) as e:
        raise LabError(f"{path} cannot be read as {path.suffix.lower()[1:]} ({str(e).splitlines()[0][:160]}): give "
                       "a parquet file, an Arrow IPC file, or another instruction file.") from None


def _bounded_batches(path: Path, schema, batches):
    """An Arrow table of `batches`, read one at a time and refused (lab.limits.check_decoded) as soon as the rows or
    bytes decoded so far pass the caps."""
    import pyarrow as pa

    kept, rows, nbytes = [], 0, 0
    for batch in batches:
        rows, nbytes = rows + batch.num_rows, nbytes + batch.nbytes
        limits.check_decoded(path.name, rows, nbytes)
        kept.append(batch)
    return pa.Table.from_batches(kept, schema=schema)


def _one_split(data, where: str, split: str = ""):
    """A Dataset from a Dataset or a DatasetDict: `split`, else "train", else its only split."""
    if not hasattr(data, "keys"):
        return data
    names = list(data.keys())
    pick = split or ("train" if "train" in names else names[0] if len(names) == 1 else "")
    if pick not in names:
        raise LabError(f"{where} has the splits {', '.join(names)}" + (f", not {split!r}" if split else "") +
                       ": name one (hub:owner/name:split for a hub data set).")
    return data[pick]


def _saved_dataset(path: Path):
    """A folder `Dataset.save_to_disk` / `DatasetDict.save_to_disk` wrote."""
    if not any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
        raise LabError(f"{path} is a folder but not a saved data set (no state.json or dataset_dict.json): give a "
                       "folder written by datasets' save_to_disk, or a file.")
    from datasets import load_from_disk

    return _one_split(load_from_disk(str(path)), str(path))


def load_hub(spec: str, column: str = "") -> list[Instruction]:
    """hub:owner/name[:split] -> instructions, through datasets.load_dataset (the hub must be reachable)."""
    repo, _, split = spec[len(HUB_PREFIX):].partition(":")
    if not HUB_ID.match(repo):
        raise LabError(f"--instructions {spec!r}: write a hub data set as hub:owner/name or hub:owner/name:split.")
    try:
        from datasets import load_dataset

        data = load_dataset(repo, split=split or None)
    except Exception as e:  # datasets raises many types for gated / missing / offline
        raise LabError(f"Could not load the data set {repo} from the Hugging Face Hub ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:160] if str(e) else ''}). Check the id; a gated set needs its terms "
                       "accepted and HF_TOKEN; offline, download it and pass the file or folder.") from e
    return _from_table(_one_split(data, repo, split), column, repo, f"hub:{repo}")


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


# ---- an upload, read apart from the web process --------------------------------------------------------------------
CHECK_SECONDS, CHECK_MB = 30, 1024  # bounds on reading one uploaded file in the app


def check_apart(path: Path, shown_as: str, seconds: float = CHECK_SECONDS, mb: int = CHECK_MB) -> int:
    """Read an uploaded instruction file in a child process, stopped past `seconds` or `mb` of memory: the web
    process's threads share one interpreter, so a file built to cost a minute or GBs to read would stall every
    visitor's page. -> how many instructions it holds. Refusals (LabError) name the file `shown_as` (the name the
    user knows), never the server's copy."""
    proc = subprocess.Popen([sys.executable, "-m", "lab.instructions", str(path)], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    past = _watch(proc, seconds, mb)
    out = proc.stdout.read().decode("utf-8", errors="replace") if past is None else ""
    proc.stdout.close()
    if past:
        raise LabError(f"{shown_as} took {past} to read on this app: upload a smaller or simpler file.")
    try:
        reply = json.loads(out)
    except json.JSONDecodeError:
        raise LabError(f"{shown_as} could not be read (the reader ended with code {proc.returncode}): upload a "
                       "plain .txt, .jsonl or .csv file instead.") from None
    if "error" in reply:
        named = reply["error"].replace(str(path), shown_as).replace(path.name, shown_as)
        raise LabError(named, reply.get("ui") and reply["ui"].replace(str(path), shown_as).replace(path.name, shown_as))
    return int(reply["count"])


def _watch(proc: subprocess.Popen, seconds: float, mb: int) -> str | None:
    """Wait for `proc`; kill it past `seconds` or `mb` of resident memory. -> what it went past, or None."""
    deadline = time.monotonic() + seconds
    while True:
        ended = proc.poll() is not None  # read before the clock: a reader that ended past the deadline took too long
        past = (f"more than {seconds:g} s" if time.monotonic() > deadline else
                None if ended else f"more than {mb} MB of memory" if _rss_mb(proc.pid) > mb else None)
        if past:
            proc.kill()
            proc.wait()
            return past
        if ended:
            return None
        time.sleep(0.05)  # on a busy machine this sleep may outlast the reader: the check above still holds


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((l for l in status.splitlines() if l.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def _check_main(path: str) -> None:
    """The child of check_apart: one JSON line, {"count": n} or {"error": message, "ui": the app's wording}."""
    try:
        print(json.dumps({"count": len(load_instructions(path))}))
    except LabError as e:
        print(json.dumps({"error": str(e), "ui": ui_text(e)}))


def load_instructions(source: str, n: int | None = None, seed: int = 0, column: str = "") -> list[Instruction]:
    """Up to n instructions from a source. Bundled sets, files, tables and hub data sets keep their order (first n);
    LIMA is shuffled with `seed` first, because its order is not a sample. `column`: where files, tables and hub
    data sets hold the instruction (see the module docstring)."""
    source = (source or "").strip()
    if source in BUNDLED:
        items = _read_jsonl(BUNDLED[source])
        items = [replace(i, source=source) for i in items]
    elif source == "lima":
        items = load_lima()
        random.Random(seed).shuffle(items)
    elif source.startswith(HUB_PREFIX):
        items = load_hub(source, column)
    else:
        items = read_file(source, column)
    return items[:n] if n else items


if __name__ == "__main__":
    _check_main(sys.argv[1])
