"""User-facing errors: the CLI and the server turn these into one-line messages."""

from __future__ import annotations


class AlaeError(Exception):
    """Base class for errors caused by the user's input (files, arguments, configs)."""


class ConfigError(AlaeError, ValueError):
    """A model configuration that is invalid or cannot be read."""


class CheckpointError(AlaeError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


class InputError(AlaeError, ValueError):
    """An image, latent or argument of the wrong shape, type or value.

    `field` names the offending argument as the Runtime calls it (`"w_b"`, `"cutoff"`, `"edits[2]"`), so a
    front end can name its own field instead (the server: the request field). The message starts with it.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
