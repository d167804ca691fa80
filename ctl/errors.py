"""Typed errors raised at the boundaries. The CLI prints str(err) (one clear
line, naming the cause and the fix) and exits with err.exit_code; the full
detail (e.g. a verifier log) is shown with -v."""
from __future__ import annotations


class StenoError(Exception):
    exit_code = 1

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


class ConfigError(StenoError):
    exit_code = 2


class UsageError(StenoError):
    exit_code = 2


class NeedRootError(StenoError):
    exit_code = 77


class BpfCompileError(StenoError):
    pass


class VerifierError(StenoError):
    pass


class InterfaceError(StenoError):
    pass


class NotDedicatedError(InterfaceError):
    exit_code = 3


class QueryError(StenoError):
    """A query that does not parse or cannot run. pos is the 0-based character
    position the message refers to, when there is one."""

    exit_code = 2

    def __init__(self, message: str, pos: int | None = None, detail: str | None = None):
        super().__init__(message, detail)
        self.pos = pos


class StoreError(StenoError):
    pass


class IndexFormatError(StoreError):
    pass


class FilterError(StenoError):
    exit_code = 2


class CertError(StenoError):
    exit_code = 2
