"""Errors that xbc reports to users.

Every error a user can cause (bad model file, bad option, infeasible target, corrupted bundle)
is an :class:`XbcError`. The CLI prints its message on one line (prefixed ``error:``) and exits
with :attr:`XbcError.exit_code` (2 for usage and input errors); the traceback is shown only with
``--debug``. Anything else escaping is a bug in xbc and is reported as such.
"""

from __future__ import annotations


class XbcError(Exception):
    """An error caused by the input or the options, with a message saying what to do."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def __str__(self) -> str:  # one line, with the hint if any
        return self.message if self.hint is None else f"{self.message}; {self.hint}"


class ModelError(XbcError):
    """The ONNX model cannot be read or lowered (names the file or node)."""


class OptionError(XbcError):
    """A CLI option, target key, or pass option is wrong (names it)."""


class PassError(XbcError):
    """A pass failed: names the pass, the node, and the passes that ran before it."""

    exit_code = 1


class VerifyError(XbcError):
    """The IR verifier found a broken invariant."""

    exit_code = 1


class BundleError(XbcError):
    """A mapping bundle is missing, corrupted or inconsistent."""


class PlacementError(XbcError):
    """The crossbars do not fit on the target."""
