"""The docs name every registry key: each registry's page documents every entry, so a new backend, source,
strategy, method, ranker kind, compare scorer, engine or stage without its line of docs fails here
(docs/extending.md: adding an entry touches its module, its test and a line of docs)."""
import re
from pathlib import Path

import pytest

from lab.compare_scorers import SCORERS
from lab.engines import ENGINES
from lab.judge_backends import BACKENDS
from lab.methods import METHODS
from lab.pairs import SOURCES, STRATEGIES
from lab.rank import RANKERS
from lab.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
PAGES = {  # registry -> (its keys, the page that documents each entry)
    "BACKENDS": (BACKENDS, "docs/judge.md"),
    "SOURCES": (SOURCES, "docs/pairs.md"),
    "STRATEGIES": (STRATEGIES, "docs/pairs.md"),
    "METHODS": (METHODS, "docs/training.md"),
    "RANKERS": (RANKERS, "docs/pairs.md"),
    "SCORERS": (SCORERS, "docs/iterative.md"),  # compare's scorers, named by their flags there (`--pairrm SPEC`)
    "ENGINES": (ENGINES, "docs/engines.md"),
}


def named(key: str, text: str) -> bool:
    """`key` as code, or its flag (`--key` or `--key VALUE`)."""
    return re.search(rf"`(--)?{re.escape(key)}[` ]", text) is not None


@pytest.mark.parametrize("registry", sorted(PAGES))
def test_each_registry_page_names_every_key(registry):
    keys, page = PAGES[registry]
    text = (ROOT / page).read_text()
    assert [k for k in keys if not named(k, text)] == [], f"{page} does not name these {registry} keys"
    assert f"`{registry}`" in (ROOT / "docs/extending.md").read_text()


def test_every_stage_is_shown_as_a_command():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert [s.name for s in STAGES if not re.search(rf"python -m lab {s.name}\b", text)] == []
    assert "`STAGES`" in (ROOT / "docs/extending.md").read_text()


def test_the_checker_sees_a_missing_key():
    assert named("all-pairs", "`--strategy all-pairs`") is False
    assert named("judge", "- `--judge local|groq`") and named("openai", "| `openai` |") and not named("open", "`openai`")
