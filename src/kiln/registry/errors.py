"""Errors the registry reports to users; each is a ``KilnError`` (CLI exit status 2)."""

from kiln.errors import KilnError


class RegistryError(KilnError):
    """A registry operation that cannot be done as asked."""


class NotFoundError(RegistryError):
    """A model, version, alias, run, user or token that does not exist."""


class BadReferenceError(RegistryError):
    """A model reference (``name@version``, ``name@alias`` or a path) that cannot be parsed."""


class ConflictError(RegistryError):
    """An operation that would break the registry's rules (e.g. delete an aliased version)."""


class ArtifactError(RegistryError):
    """An artifact that is missing or does not match its recorded hash."""


class AuthError(RegistryError):
    """A missing, unknown or revoked API token, or a role too weak for the operation."""
