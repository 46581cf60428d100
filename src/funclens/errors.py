"""The exception classes of funclens: a leaf module that imports nothing of ours, so every module may use it.

A :class:`FunclensError` is the user's problem (bad input, a damaged or missing file): the CLI prints it as
one line and exits 2. Any other exception escaping a command is a fault of funclens itself: exit 1.

Example:
    >>> issubclass(StoreError, FunclensError), issubclass(ValueError, FunclensError)
    (True, False)
"""


class FunclensError(Exception):
    """Bad input: the CLI prints it as one line and exits 2."""


class ConfigError(FunclensError):
    """A config value is missing, of the wrong type or out of range."""


class DataError(FunclensError):
    """A data set is missing, damaged, or not in its canonical format."""


class StoreError(FunclensError):
    """A run folder or study record is missing, damaged, or cannot be written."""


class MetricsError(FunclensError):
    """Predictions that cannot be compared: wrong shape, non-finite values, unknown metric."""
