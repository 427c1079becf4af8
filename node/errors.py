"""The node's error tree, and the one place that turns an error into an HTTP answer.

    ModmeshError                 500  something the node did wrong (a bug)
    ├── InvalidRequest           400  malformed path, escaping or request shape
    ├── NotFound                 404  no such module/version here or upstream
    │   └── Gone                 410  upstream said 410
    ├── UpstreamError            502  every upstream failed (status, reset, bad body)
    │   ├── UpstreamTimeout      504  an upstream did not answer in time
    │   └── IntegrityError       502  bytes failed verification (zip rules, h1, JSON)
    ├── LookupDisabled           404  the chain reached `off`
    └── StorageFull              507  the store's disk is full

Pure protocol modules (modpath, modzip, gomod) raise their own ValueError
subclasses; the layer that calls them translates at the boundary.

The go command prints a `text/plain; charset=utf-8` error body up to its first blank
line (see docs/protocol notes, 2.3), so every error of the node's own carries exactly
one short line, and never an upstream's address; an upstream's 404/410 text is passed
on as it said it (cleaned, cut to a few KiB).
"""

from __future__ import annotations


class ModmeshError(Exception):
    """Base class; `status` and `cache_control` say how the HTTP layer answers."""

    status = 500
    #: Errors are never cached by intermediaries unless a subclass says so.
    cache_control = "no-store"

    def __init__(self, message: str, *, body: str | None = None) -> None:
        # One line only: the go command shows the body up to the first blank line.
        super().__init__(" ".join(message.split()))
        #: Text clients get verbatim instead of the one line: an upstream's own 404/410
        #: body, which the go command prints (and Go's tests check). Never names an upstream.
        self.body = body

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(ModmeshError):
    status = 400


class NotFound(ModmeshError):
    status = 404
    cache_control = "public, max-age=60"


class Gone(NotFound):
    status = 410


class LookupDisabled(NotFound):
    """The upstream chain reached `off` before finding the file."""


class UpstreamError(ModmeshError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class IntegrityError(UpstreamError):
    """The bytes an upstream or peer sent are not sound; they were not cached."""


class StorageFull(ModmeshError):
    status = 507

    def __init__(self, message: str, cause: str = "disk full") -> None:
        super().__init__(message)
        #: Short reason for health reports and logs ("disk full (ENOSPC)").
        self.cause = cause


def error_body(err: ModmeshError) -> bytes:
    """The text/plain body: one line, then a blank line (the go command stops there);
    or an upstream's own text, as it said it."""
    if err.body is not None:
        return err.body.encode()
    return (err.message + "\n\n").encode()
