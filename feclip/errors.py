"""The one base of every error about the user's input.

A `FeclipError` names what was wrong (a config key and its value, a file, a folder, a URI) and what was
expected, on one line. `run.py` prints it as `feclip: error: <message>` and exits 2; any other exception is a
bug and keeps its traceback.
"""


class FeclipError(ValueError):
    """A problem with the user's input: a config value, a file, a folder, a URI; the message is one line."""
