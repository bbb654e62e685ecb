"""Settings as files: `python -m lab <stage> --run R --config FILE` fills the stage's settings from FILE, and any
flag on the command line overrides the file (lab.cli parses twice: the file's values become the flags' defaults).

FILE is one of:
  - a YAML file (.yaml / .yml) of `field: value` lines, the fields of the stage's settings dataclass (the flag names
    without the dashes; `max-new-tokens` is read as `max_new_tokens`). An unknown key is refused, naming the known
    ones; a null value means the field's default. Written by `settings_yaml` (the app's "Settings as YAML"):

        # python -m lab train --run demo --config train.yaml
        pairs: judge
        adapter: dpo-judge
        method: dpo
        ...

  - a run's run.json (lab.store.Run.record_stage): the stage's entry there is the settings it last ran with, so a run
    is redone stage by stage from its run.json alone. What the stage recorded beside its settings (model_path,
    statistics, "updated") is left out. The pairs stage is recorded per source ("pairs-judge"): --source picks it.

Values are checked against each field's type (a whole number for an int field, true/false for a bool), and a
number for a text field is taken as its text.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Callable

from lab.config import Settings, kind_of
from lab.errors import LabError
from lab.store import read_user_text

YAML_SUFFIXES = (".yaml", ".yml")


def read_config(path: str, cls: type[Settings], entry: str) -> dict[str, Any]:
    """{field: value} for settings `cls` from a YAML file or a run.json's `entry` (the stage's: lab.stages'
    Stage.entry; see the module docstring)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise LabError(f"--config {path}: no such file; give a YAML settings file or a run's run.json.")
    text = read_user_text(file, "Settings file")
    if file.suffix.lower() in YAML_SUFFIXES:
        return checked_values(cls, _yaml_mapping(file, text), str(file))
    if file.suffix.lower() == ".json":
        return checked_values(cls, _run_json_entry(file, text, entry), str(file), known_only=True)
    raise LabError(f"--config {path}: use a .yaml / .yml settings file or a run's run.json.")


def _yaml_mapping(file: Path, text: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise LabError(f"--config {file}: not valid YAML{line}: write one `setting: value` per line.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabError(f"--config {file}: the file must hold `setting: value` lines, not a {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _run_json_entry(file: Path, text: str, name: str) -> dict:
    """The settings recorded as `name` in a run.json ({"stages": {name: {...}}})."""
    try:
        stages = json.loads(text).get("stages")
    except (json.JSONDecodeError, AttributeError):
        stages = None
    if not isinstance(stages, dict):
        raise LabError(f"--config {file}: not a run's run.json (no \"stages\"); give a YAML file for other settings.")
    if not isinstance(stages.get(name), dict):
        have = ", ".join(sorted(stages)) or "none"
        raise LabError(f"--config {file}: the run never ran {name} (it recorded: {have}).")
    return stages[name]


def checked_values(cls: type[Settings], values: dict, where: str, known_only: bool = False) -> dict[str, Any]:
    """Values as their fields' types; unknown keys refused (or, from a run.json, left out); nulls dropped."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown and not known_only:
        raise LabError(f"--config {where}: unknown setting(s) {', '.join(unknown)} for this stage; its settings are "
                       f"{', '.join(fields)}.")
    return {k: _as_type(fields[k], v, where) for k, v in values.items() if k in fields and v is not None}


def _as_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = kind_of(f)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, (str, int, float)) and not isinstance(value, bool)}[kind]
    if not ok and kind in (int, float) and isinstance(value, str):  # YAML reads 5e-5 (no dot) as text
        try:
            return kind(value)
        except ValueError:
            pass
    if not ok:
        what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[kind]
        raise LabError(f"--config {where}: {f.name} must be {what} (got {value!r}).")
    return kind(value)


def settings_yaml(stage: str, run: str, settings: Settings) -> str:
    """The YAML file that redoes `settings` of `stage` (every field, in the dataclass's order), headed by the command
    that reads it."""
    import yaml

    body = yaml.safe_dump(settings.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"# python -m lab {stage} --run {shlex.quote(run)} --config {stage}.yaml\n{body}"


def command_line(argv: list[str]) -> str:
    """`python -m lab <argv>` as a shell line (each argument quoted where it needs it)."""
    return "python -m lab " + " ".join(shlex.quote(a) for a in argv)



def yaml_download(stage: str, run: str, settings: Settings, shown: Callable[[str], str] = str) -> Path:
    """settings_yaml written to `<temp>/preference-lab-settings/<hash>/<stage>.yaml`, for the app's download button:
    outside the run (a hosted app may show a run it may not write to), named for the --config line inside it.
    shown: the text as the page may show it (a hosted app's lab.hosting.public_text)."""
    import hashlib
    import tempfile

    text = shown(settings_yaml(stage, run, settings))
    folder = Path(tempfile.gettempdir()) / "preference-lab-settings" / hashlib.sha256(text.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.yaml"
    if not path.exists():
        path.write_text(text, encoding="utf-8")
    return path
