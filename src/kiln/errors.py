"""Errors that Kiln reports to users.

A ``KilnError`` carries a message that says what is wrong and where; the CLI prints it and
exits with status 2. Anything else escaping a command is a bug in Kiln. An ``HTTPProblem`` is
the same for an HTTP client: Kiln's apps (server, monitor, dashboard) answer it with its status.
"""

from __future__ import annotations

from collections.abc import Mapping


class KilnError(Exception):
    """A problem with the user's input (recipe, data, package) rather than with Kiln."""

    exit_code = 2


class ConfigError(KilnError):
    """A recipe or override that does not validate."""


class DataError(KilnError):
    """A dataset that cannot be read or is unusable (missing column, empty, one class...)."""


class PackageError(KilnError):
    """A model package that is missing, incomplete or altered."""


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status (and headers)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
