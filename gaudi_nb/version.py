"""The version of gaudi_nb: one place, read by the package, the node bootstrap and the server extension
(modules import it from here, not from the package root, which would import every room)."""

__version__ = "0.1.0"
