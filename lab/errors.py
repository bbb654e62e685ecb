"""The one exception type users see.

Every check on user input raises `LabError` with a message that says what is wrong *and what to change*.
The CLI prints it and exits with status 2; the app shows it as an error toast. Anything else is a bug.
"""


class LabError(Exception):
    """A problem the user can fix (bad input, missing key, model not reachable...)."""
