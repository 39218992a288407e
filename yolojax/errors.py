"""The two kinds of failure the `yolojax` command reports in one line instead of a traceback.

UserError: the input is wrong (an argument, a file, a dataset); the user can fix it. Exit status 2.
RuntimeFailure: the input was fine but the job could not finish (training diverged, a check failed). Exit 1.

Both are plain exceptions for the Python API; stages subclass them next to a builtin (ValueError, KeyError,
RuntimeError) so code that catches the builtin keeps working. This module imports nothing: the CLI's top
level handler needs it without paying for JAX.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message says what and where, in one line."""


class RuntimeFailure(Exception):
    """A job that started with good input and could not finish; the message says what to do."""


class OutputExistsError(UserError, FileExistsError):
    """A command would replace or delete files it did not write."""

    def __str__(self) -> str:  # FileExistsError formats (errno, strerror); keep the plain message
        return str(self.args[0]) if self.args else ""
