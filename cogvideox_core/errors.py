"""The pack's own exceptions. Bad user input is a ``ValueError`` that names the input, the
value and the rule; these classes add what a caller may want to catch specifically."""
from __future__ import annotations


class CogVideoXError(Exception):
    """Base class of the pack's own errors."""


class WeightsError(CogVideoXError, ValueError):
    """A weight file or folder is missing, truncated, corrupt or of another model.
    The message names the file and what was expected or found."""


class Interrupted(CogVideoXError):
    """The run was interrupted by the user (through the runtime's interrupt check)."""


class InterruptedKeeping(Interrupted):
    """Interrupted after some outputs were written; the message names what was kept."""


class NonFiniteError(CogVideoXError):
    """A computed result (sampled latents, decoded frames) holds NaN or inf; nothing is
    written. The message says where it appeared and what usually causes it."""


class NonFiniteWeightsError(WeightsError):
    """A weight tensor holds NaN or infinite values as stored (found while it is read): the
    file is damaged or was saved from a diverged training. The message names the file, the
    tensor key and how many values are NaN and inf."""
