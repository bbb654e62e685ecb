"""Settings machinery: every stage's settings are one dataclass of `opt` fields, defined next to the stage that uses
them (lab.sample.SampleConfig, lab.judge.JudgeConfig, ...; the stage rows of lab/stages.py list them all).

One dataclass fills the command line (`add_arguments` / `from_args`), a YAML-free `key: value` dict
(`from_dict`), the app's forms (`from_form`, and lab/ui/forms.py builds the inputs from the same fields), and
run.json (`to_dict`). Field names become flags: `max_new_tokens` -> `--max-new-tokens`. A field's metadata holds its
one-line help, its label in the app and, where the values are a fixed set, the choices, which come from the
registry of that extension point (judge backends, pair sources and strategies, training methods), never from a list
typed again. Secrets are never fields: API keys and hub tokens come from the environment (or the app's session) at
the moment of use.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from dataclasses import field
from typing import Any

from lab.errors import LabError


def opt(default: Any, help: str, choices: tuple | None = None, label: str | None = None) -> Any:
    """A settings field: its default, the one line that explains it (shown by --help and in the app), its fixed
    choices (validated on the command line and offered in the app), and its label in the app (default: the name)."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "label": label})


def kind_of(f: dataclasses.Field) -> type:
    """The Python type of a field's values, from its default (str for a None default)."""
    return type(f.default) if f.default is not None else str


class Settings:
    """Mixin for a stage's settings dataclass: argparse, forms and dicts in, flags and dicts out, validation.

    Every subclass's `validate()` first runs `check_finite()` and `check_choices()` (wrapped in by
    __init_subclass__), so no stage ever runs with, or writes into run.json, a NaN, an infinity or a value outside
    its choices; a new field is covered without more code."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("validate")
        if own is not None:
            @functools.wraps(own)
            def validate(self):
                self.check_finite()
                self.check_choices()
                return own(self)
            cls.validate = validate

    def validate(self):
        self.check_finite()
        self.check_choices()
        return self

    def check_finite(self) -> None:
        """LabError for the first float field that is NaN or infinite (argparse's float() accepts 'nan', 'inf')."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LabError(f"--{flag(f.name)} must be a finite number (got {value}): give a plain "
                               f"number such as {f.default}.")

    def check_choices(self) -> None:
        """LabError for a field whose value is not one of its choices (the app and dicts skip argparse's check)."""
        for f in dataclasses.fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if choices and value not in choices:
                raise LabError(f"--{flag(f.name)} {value!r} is not one of {', '.join(map(str, choices))}.")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            kind, help_ = kind_of(f), (f.metadata.get("help") or "").replace("%", "%%")  # argparse formats help
            if kind is bool:
                parser.add_argument("--" + flag(f.name), action=argparse.BooleanOptionalAction, default=f.default,
                                    help=f"{help_} (default: {'on' if f.default else 'off'})")
            else:
                shown = "" if "(default" in help_ else f" (default: {f.default if f.default != '' else 'none'})"
                parser.add_argument("--" + flag(f.name), type=kind, default=f.default,
                                    choices=f.metadata.get("choices"), help=help_ + shown)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def from_dict(cls, values: dict):
        """Settings from a {field: value} dict (a config file, run.json); unknown keys are refused by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise LabError(f"Unknown setting(s) {', '.join(unknown)} for {cls.__name__}: the settings are "
                           f"{', '.join(sorted(names))}.")
        return cls(**values)

    @classmethod
    def from_form(cls, values: dict, **fixed):
        """Settings from an app form: {field: component value}, each coerced to its field's type (a Number gives
        floats, a Textbox may hold spaces, an empty box means the default); `fixed` values are taken as they are."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {name: coerce(fields[name], value) for name, value in values.items()}
        return cls(**{**out, **fixed})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_argv(self) -> list[str]:
        """The command-line flags that rebuild these settings (how the app hands work to a `python -m lab` job)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                argv.append(f"--{flag(f.name)}" if value else f"--no-{flag(f.name)}")
            elif value is not None:
                argv += [f"--{flag(f.name)}", str(value)]
        return argv

    @classmethod
    def help(cls, name: str) -> str:
        return cls.field(name).metadata.get("help", "")

    @classmethod
    def field(cls, name: str) -> dataclasses.Field:
        return next(f for f in dataclasses.fields(cls) if f.name == name)


def flag(name: str) -> str:
    """A field's command-line flag without the dashes: max_new_tokens -> max-new-tokens."""
    return name.replace("_", "-")


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """A form value as the field's type: None / "" -> the default; numbers rounded for int fields; text stripped;
    a list (a multiselect) joined by ','."""
    if value is None or (isinstance(value, str) and not value.strip() and kind_of(f) is not str):
        return f.default
    kind = kind_of(f)
    if kind is bool:
        return bool(value)
    if kind is int:
        return int(round(float(value)))
    if kind is float:
        return float(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()
