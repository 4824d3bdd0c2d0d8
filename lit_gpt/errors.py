"""Errors that the person running a command caused and can fix: bad values, missing files, refused settings.

The scripts report them as one line on stderr and exit with status 2 (``lit_gpt.cli.run``); any other
exception is a bug and keeps its traceback. Each also derives from the built-in exception it stands
for, so code that catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the command's input, its message says what is wrong and what to do.

    In a job of several processes most of these are raised by every rank alike (the same settings, what
    rank 0 read and broadcast), and global rank 0 alone prints them: ``report_here`` None. An error that
    one rank found by itself (a damaged shard it read) has ``report_here`` True, and one raised only so
    that a rank leaves with the others after another rank's error has it False."""

    report_here: bool | None = None

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


class CheckpointWriteFailed(UserError, OSError):
    """The filesystem refused a checkpoint (an I/O error, a vanished directory): the newer checkpoints
    are intact, and the same command resumes once the filesystem is fixed."""


class AnotherRankFailed(UserError):
    """This rank stops because another one reported an error (which that rank prints, not this one)."""

    report_here = False
