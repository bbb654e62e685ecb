"""The app's tabs, in pipeline order: (title, module). A module of its own (importing nothing) so that the wording
can map a stage row's tab key (lab.stages: the module's last name) to its title without importing the app."""
from __future__ import annotations

TABS: list[tuple[str, str]] = [
    ("Sample", "lab.ui.sample"),
    ("Judge", "lab.ui.judge"),
    ("PairRM", "lab.ui.rank"),
    ("Spot-check", "lab.ui.spotcheck"),
    ("Train", "lab.ui.train"),
    ("Compare", "lab.ui.compare"),
    ("Chat", "lab.ui.chat"),
    ("Iterate", "lab.ui.iterate"),
    ("Share", "lab.ui.share"),
]
