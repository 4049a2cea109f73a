"""User-facing errors: the CLI and the server turn these into one-line messages."""


class AlaeError(Exception):
    """Base class for errors caused by the user's input (files, arguments, configs)."""


class ConfigError(AlaeError, ValueError):
    """A model configuration that is invalid or cannot be read."""


class CheckpointError(AlaeError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


class InputError(AlaeError, ValueError):
    """An image, latent or argument of the wrong shape, type or value."""
