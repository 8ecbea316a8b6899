"""Exceptions with messages a user can act on. The CLI prints them without a traceback."""


class VlunlearnError(Exception):
    """Base class of every error vlunlearn raises on bad input."""


class ConfigError(VlunlearnError, ValueError):
    """A setting, option or name given by the user is invalid."""


class DataError(VlunlearnError, ValueError):
    """A dataset, image or annotation file is missing, unreadable or malformed."""


class RequestError(VlunlearnError, ValueError):
    """An unlearning request names unknown concepts or ids, or selects nothing or everything."""


class CheckpointError(VlunlearnError, ValueError):
    """A checkpoint is corrupt, unsafe to load, or does not match the architecture."""


class TrainingError(VlunlearnError, RuntimeError):
    """Training cannot go on (for example the loss stayed non-finite)."""


class RunInterrupted(VlunlearnError):
    """A run was stopped by SIGINT or SIGTERM; its training state was saved when it could be."""
