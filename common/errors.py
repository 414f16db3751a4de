"""Errors that mean "the user's data or config is wrong", as opposed to a bug.

``tgm`` prints these as one line (the message names the file and line, or the key) and exits with code 2;
``TGM_TRACEBACK=1`` shows the traceback. They subclass the built-in errors callers already expect
(``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a malformed data file, an out-of-range value, an inconsistent config."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the config names does not exist."""


class TrainingDiverged(RuntimeError):
    """A loss, gradient norm or weight became NaN or infinite: ``tgm`` prints the message (epoch, step, batch
    and the last good checkpoint) as one line and exits with code 3."""
