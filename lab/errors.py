"""The one exception type users see.

Every check on user input raises `LabError` with a message that says what is wrong *and what to change*.
The CLI prints it and exits with status 2; the app shows it as an error toast (or in a job's panel). Anything else
is a bug.

The message is written for the command line (flags, commands). Where the way out reads differently in the app
(a tab or a button instead of a command), the error carries that wording too: `LabError(cli_text, ui=app_text)`.
The app shows `ui` when there is one (lab/ui/wording.py turns any remaining flag into its control's label).
"""
from __future__ import annotations


class LabError(Exception):
    """A problem the user can fix (bad input, missing key, model not reachable...)."""

    def __init__(self, message: str = "", ui: str | None = None):
        super().__init__(message)
        self.ui = ui  # the same problem in the app's words, when they differ from the command line's


def ui_text(error: BaseException) -> str:
    """What the app shows for an error: its UI wording if it has one, else its message."""
    return getattr(error, "ui", None) or str(error)
