"""The eval package's user error, in a leaf module so specs, kinds and scoring all raise it."""

from __future__ import annotations

from dinotrain.errors import UserError


class SpecError(UserError, ValueError):
    """A bad task spec or data folder; the message names the file/key and the fix."""
