"""The error compression raises for inputs it cannot work with."""

from kiln.errors import KilnError


class CompressError(KilnError):
    """A package, step or setting that compression cannot work with (exit status 2)."""
