"""The errors the engine raises on purpose.

Every one carries a complete, user-facing message: what went wrong, with which setting, and what to do about it.
The CLI prints it on one line and the app shows it in a dialog; neither adds a traceback. Anything else that
escapes the engine is a bug.
"""

from __future__ import annotations


class OptimError(Exception):
    """Base class: the message is complete and meant for the user."""

    #: CLI exit status. 2 is "bad input" (fix the command), 1 is "the run failed".
    exit_code = 1


class ConfigError(OptimError, ValueError):
    """A setting, preset, share link or request is invalid (unknown key, wrong type, out of range)."""

    exit_code = 2


class ModelError(OptimError):
    """The model cannot be resolved or loaded (unknown id, no network, broken folder, unsafe files)."""

    exit_code = 2


class UnavailableError(OptimError):
    """An option is valid but this machine cannot run it (package missing, needs CUDA, ...)."""

    exit_code = 2


class IncompatibleError(OptimError):
    """A combination of options cannot work; raised before any model is loaded."""

    exit_code = 2


class RunError(OptimError):
    """The run itself failed: out of memory, a backend failing at run time, a compile failure, NaNs."""


class WorkerCrashed(RunError):
    """The process that ran one side died (segfault, killed for memory). The caller is unharmed."""


class Cancelled(OptimError):
    """The user cancelled the comparison; everything it held has been freed."""
