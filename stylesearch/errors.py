"""Error types raised by the core library.

The core never prints or exits; frontends turn these into one clear message
on stderr and a non-zero exit code.
"""

from __future__ import annotations


class StyleSearchError(Exception):
    """Base error: a message for the user plus an optional hint on how to fix it.

    Messages and hints are phrased for any frontend (no command-line flags). `dataset` and
    `step` (the library step that has to run first, e.g. "embed") let each frontend add its
    own advice: the CLI names the command to run, the HTTP server returns them as fields.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, dataset: str | None = None,
                 step: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.dataset = dataset
        self.step = step

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UserError(StyleSearchError):
    """The user asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class DatasetNotFound(UserError):
    """No dataset of that name exists under the dataset root."""


class ItemNotFound(UserError):
    """An item id or path does not exist in the catalog."""


class ModelWeightsMissing(UserError):
    """Pretrained weights are not available locally and cannot be fetched."""


class NotReady(UserError):
    """A step that must run first (embed, index, train...) has not run yet."""


class DatasetBusy(StyleSearchError):
    """Another process holds the dataset's writer lock (exit code 75, EX_TEMPFAIL)."""

    exit_code = 75


class CatalogError(StyleSearchError):
    """The catalog is unreadable or from an unknown newer schema."""


class PathRefused(UserError):
    """A path that would leave the dataset folder (a hostile catalog row, manifest entry or link)."""


class PortBusy(StyleSearchError):
    """The server's address and port cannot be listened on (in use, or not this machine's)."""


class DiskFull(StyleSearchError):
    """A write failed for lack of space; the previous state of the file is kept."""
