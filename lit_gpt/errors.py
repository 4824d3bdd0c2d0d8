"""Errors that the person running a command caused and can fix: bad values, missing files, refused settings.

The scripts report them as one line on stderr and exit with status 2 (``lit_gpt.cli.run``); any other
exception is a bug and keeps its traceback. Each also derives from the built-in exception it stands
for, so code that catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the command's input, its message says what is wrong and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


class InvalidInput(UserError, ValueError):
    """A value, file content or combination of settings that cannot be used."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory that the command needs is not there."""


class OutputExists(UserError, FileExistsError):
    """The command would overwrite something it should not."""


class TensorMismatch(UserError, KeyError):
    """A checkpoint's tensors are not those of the model: one missing, unexpected or unnamed."""


class OutOfSpace(UserError, OSError):
    """The filesystem has no room for what the command must write."""
