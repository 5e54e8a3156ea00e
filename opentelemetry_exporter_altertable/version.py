"""The package version, in one place: read by hatchling and sent as ``$lib_version``."""

__version__ = "0.1.0"
