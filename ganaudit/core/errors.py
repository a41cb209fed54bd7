"""The ganaudit exception hierarchy. Messages say what went wrong and how to fix it."""


class GanauditError(Exception):
    """Base class for every error ganaudit raises on purpose."""


class ImageDecodeError(GanauditError):
    """An image could not be read or decoded, or breaks a limit."""


class ModelFormatError(GanauditError):
    """A model file or run directory is missing, corrupt, or not a ganaudit model."""


class ConfigError(GanauditError):
    """A configuration value or command-line argument is invalid."""
