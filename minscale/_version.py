"""The package version, in a module of its own so no submodule imports the root package."""

__version__ = "0.1.0"
