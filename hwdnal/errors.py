"""The one exception type the CLI turns into a single line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message: what a one-line UserError quotes of a cause."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
