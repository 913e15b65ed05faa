"""Errors the backend raises to users."""
from __future__ import annotations

try:  # Dynamo re-raises these from a backend as they are, instead of wrapping them in BackendCompilerFailed
    from torch._dynamo.exc import ShortenTraceback as _Unwrapped
except ImportError:  # another torch: the error comes wrapped, with this message inside
    _Unwrapped = Exception


class OptionError(_Unwrapped, ValueError):
    """A bad backend option (or an artifact that does not fit the options or the model): a ``ValueError`` that
    reaches the caller of the compiled model as it is, not inside Dynamo's ``BackendCompilerFailed``."""

    def __init__(self, msg: str):
        if _Unwrapped is Exception:
            super().__init__(msg)
        else:
            super().__init__(msg, first_useful_frame=None)


class FreedWeightError(RuntimeError):
    """A weight released by ``free_weights`` was about to be read (see ``runtime/free.py``)."""
