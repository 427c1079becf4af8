"""modmesh's node: a Go module proxy for the edge (see docs/architecture.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The one version string: the installed package's.
    __version__ = version("modmesh")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
