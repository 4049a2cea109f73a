"""The exporters' error: a failed export, check or verification, shown by the CLI as one line."""

from alae_rt.errors import AlaeError


class ExportError(AlaeError):
    """An export that cannot be done or did not verify: unsupported settings, a refused graph, a parity failure."""
