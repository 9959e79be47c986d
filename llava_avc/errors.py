"""The one exception llava-avc raises on purpose for a user's mistake: `UserError`.

A `UserError` is one line: what is wrong, the value given, the constraint, and the fix. The command line
prints it as ``llava-avc COMMAND: error: ...`` with exit status 2; any other exception is a bug (of
llava-avc or of a library) and shows its traceback. The one other kind of error the command line prints
as one line is an operating-system error on a named file (a full disk, a permission denied), which is
about the machine, not the code.

`UserError` is a `ValueError`, so Python callers that catch `ValueError` around llava-avc's API keep
working. Errors with a class of their own derive from it: `NonFiniteLogitsError` (a model that produced
NaN/inf logits: load it in another dtype), `UntestedTransformersError` (a transformers release newer than
the tested ones broke a contract: install a tested one), `NotALlavaCheckpointError`,
`ModelNotAvailableError`.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake of the user's (an argument, a file, an installation): one line with the fix."""


def is_environment_error(error: BaseException) -> bool:
    """An operating-system error about a named file or a known errno (disk full, permission denied,
    no such file): the machine's state, reported in one line like a `UserError`."""
    return isinstance(error, OSError) and error.errno is not None and bool(error.strerror)
