"""farts-edge: the control plane of an edge node (see DESIGN.md for the services)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("farts-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
