"""The few errors the service layer raises; the API maps each to one HTTP status."""

from __future__ import annotations


class StyleqError(Exception):
    """Base of the service's errors: a stable machine-readable code and a message a person can act on."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(StyleqError):
    code = "invalid_input"


class InvalidImage(InvalidInput):
    """A file that is not a whole picture in a format the service reads, or one over the pixel limit."""

    code = "invalid_image"


class Unprocessable(InvalidInput):
    """Well-formed input the service will not run (a parameter out of range, over a limit, an idempotency key reused)."""

    code = "invalid_params"


class NotFound(StyleqError):
    code = "not_found"


class Conflict(StyleqError):
    code = "conflict"


class Gone(StyleqError):
    """Something that existed and was removed for good (a result past its retention)."""

    code = "gone"


class Unauthorized(StyleqError):
    code = "unauthorized"


class StorageUnavailable(StyleqError):
    """The storage directory refused a write (full, read-only): nothing was stored, the client may try again later."""

    code = "storage_unavailable"


class LimitExceeded(StyleqError):
    """A client over one of its fair-use limits: nothing was done, and it may try again after `retry_after_seconds`."""

    code = "limit_exceeded"

    def __init__(self, message: str, *, code: str | None = None, retry_after_seconds: int) -> None:
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds
