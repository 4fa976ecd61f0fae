"""The node's version. It is written once, in ``pyproject.toml``, and read here from the
installed distribution's metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("ainode")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
