"""Form inputs built from a stage's settings dataclass, and the settings read back from them.

`inputs(SampleConfig, ["model", "n", ...], model=dict(...))` lays out one input per field, in the current row:
its label and help come from the field's metadata (lab.config.opt), its kind from the field's type (a Checkbox for a
bool, a Number for an int or float, a Dropdown where the field has choices, else a Textbox), its value from the
default. Keyword arguments override per field (a Slider for a temperature, the choices' labels, another default).
`read(SampleConfig, form, values)` is SampleConfig.from_form over the same names, so a new setting is one field in
the dataclass and one name in a tab's list. `values_of(settings, form)` is its inverse: the inputs' values for given
settings (a job's, to fill the form again after a reload: lab.ui.views.wire_restore).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from lab.config import kind_of
from lab.ui.wording import page_text, stage_of

KINDS = {"Slider": gr.Slider, "Dropdown": gr.Dropdown, "Radio": gr.Radio, "Textbox": gr.Textbox,
         "Number": gr.Number, "Checkbox": gr.Checkbox, "CheckboxGroup": gr.CheckboxGroup}


def _defaults(f: dataclasses.Field, stage: str | None = None) -> dict[str, Any]:
    """The component kind and arguments a field gets when nothing is overridden; the help in the page's words
    (a flag named in it becomes its input's label: lab.ui.wording)."""
    meta, kind = f.metadata, kind_of(f)
    label = meta.get("label") or f.name.replace("_", " ").capitalize()
    info = page_text(meta["help"], stage) if meta.get("help") else None
    args: dict[str, Any] = {"label": label, "info": info, "value": f.default}
    if kind is bool:
        return {"kind": "Checkbox", **args}
    if meta.get("choices"):
        return {"kind": "Dropdown", "choices": list(meta["choices"]), **args}
    if kind in (int, float):
        return {"kind": "Number", **({"precision": 0} if kind is int else {}), **args}
    return {"kind": "Textbox", **args}


def help_of(cls):
    """name -> the help of settings field `name` of `cls` in the page's words, for inputs built by hand."""
    stage = stage_of(cls)
    return lambda name: page_text(cls.help(name), stage)


def input_for(cls, name: str, **override) -> gr.Component:
    """One input for settings field `name` of `cls` (see the module docstring)."""
    spec = {**_defaults(cls.field(name), stage_of(cls)), **override}
    kind = KINDS[spec.pop("kind")] if isinstance(spec.get("kind"), str) else spec.pop("kind")
    return kind(**spec)


def inputs(cls, names: list[str], **overrides: dict) -> dict[str, gr.Component]:
    """{field name: input} for `names`, laid out in order in the current layout block."""
    return {name: input_for(cls, name, **overrides.get(name, {})) for name in names}


def read(cls, form: dict[str, gr.Component], values: tuple | list, **fixed):
    """Settings `cls` from the values of `form`'s inputs (in its order), plus `fixed` fields set by the handler."""
    return cls.from_form(dict(zip(form, values)), **fixed)


def values_of(settings, form: dict[str, gr.Component]) -> list:
    """The value each input of `form` shows for `settings` (a settings dataclass): read's inverse. A multiselect
    (a comma-joined field, like loss_type) gets its list back."""
    return [value_for(comp, getattr(settings, name)) for name, comp in form.items()]


def value_for(comp: gr.Component, value: Any) -> Any:
    if isinstance(comp, gr.CheckboxGroup) or getattr(comp, "multiselect", False):
        return [v.strip() for v in str(value or "").split(",") if v.strip()]
    return value
