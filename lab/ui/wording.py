"""Messages in the app's words: an error's UI wording (lab.errors.LabError's `ui`), with whatever command-line
wording is left turned into the names of the app's controls.

The core writes its messages for a terminal ("--ranker tiny-random", "`python -m lab pairs`", "run the same command
again"). Errors whose way out differs in the app carry their own UI text; `page_text` is the safety net for the
rest: a flag becomes its input's label (from the settings field, lab.config.opt), a `python -m lab <stage>` command
becomes the stage's tab, backticks go (a toast shows them literally), and the runs root drops out of paths.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re

from lab.errors import ui_text
from lab.stages import STAGES
from lab.store import runs_root
from lab.ui.tabs import TABS

TAB_TITLES = {module.rsplit(".", 1)[1]: title for title, module in TABS}  # a stage row's tab key -> its title
TAB_OF_STAGE = {st.name: TAB_TITLES[st.tab] for st in STAGES}  # the tab that runs each stage, by its title
FLAG = re.compile(r"--(no-)?([a-z][a-z0-9-]*)")
# a stage's command ("python -m lab sample ...", "`lab judge`"): a stage's own name only, so prose such as "the lab
# pushes with your own account" stays prose (it read "the the Pushes tab")
COMMAND = re.compile(r"`?(?:lab|python -m lab) (" + "|".join(TAB_OF_STAGE) + r")\b[^`);,.]*`?")
AGAIN = re.compile(r"\b(?:re)?run (?:the same command|this|it) again\b|\brerun the same command\b", re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def _labels(stage: str | None) -> dict[str, str]:
    """flag name (no dashes) -> the label its input has in the app: the stage's own when given, else the label all
    stages agree on (or the words they share: 'Instructions (N)' and 'Instructions (0 = all)' -> 'Instructions')."""
    found: dict[str, list[str]] = {}
    for st in STAGES:
        if stage in (None, st.name):
            for f in dataclasses.fields(st.settings):
                found.setdefault(f.name.replace("_", "-"), []).append(f.metadata.get("label") or "")
    return {flag: _shared(labels) or flag.replace("-", " ") for flag, labels in found.items()}


def _shared(labels: list[str]) -> str:
    named = sorted({x for x in labels if x})
    if len(named) <= 1:
        return named[0] if named else ""
    prefix = os.path.commonprefix(named)
    return prefix if prefix in named else prefix.rsplit(" ", 1)[0].strip(" (")


def page_text(text: str, stage: str | None = None) -> str:
    """A core message as the page should say it (see the module docstring)."""
    text = text.replace(str(runs_root()) + os.sep, "")
    text = COMMAND.sub(lambda m: f"the {TAB_OF_STAGE.get(m.group(1), m.group(1).capitalize())} tab", text)
    text = re.sub(r"\bthe (\S+) tab,? or the \1 tab\b", r"the \1 tab", text)
    text = re.sub(r"\((?:pass |with )?--run NEW_NAME\)", "(type a new run name at the top)", text)
    text = AGAIN.sub("start it again", text)
    labels = {**_labels(None), **(_labels(stage) if stage else {})}
    text = FLAG.sub(lambda m: _flag(labels, m.group(2), bool(m.group(1))), text)
    return text.replace("`", "")


def count(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 pair', '2 pairs' (nouns: an irregular plural)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def _flag(labels: dict[str, str], name: str, negated: bool) -> str:
    if name == "run":
        return "the run name"
    label = labels.get(name, name.replace("-", " "))
    return f"“{label}” off" if negated else f"“{label}”"


def say(error: BaseException, stage: str | None = None) -> str:
    """An exception (a LabError) as the page shows it."""
    return page_text(ui_text(error), stage)


def stage_of(settings) -> str | None:
    """The stage whose settings dataclass `settings` is (or is an instance of; its labels name the flags), else
    None."""
    cls = settings if isinstance(settings, type) else type(settings)
    return next((st.name for st in STAGES if cls is st.settings), None)
