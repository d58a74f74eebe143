"""User-facing errors: anything the user can fix (bad model reference, bad input, bad settings).

The CLI prints these as one line and exits with status 2; the server turns them into HTTP 400.
"""


class SaguaroError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ModelLoadError(SaguaroError):
    """A model reference could not be resolved or its files are unusable."""


class InvalidRequestError(SaguaroError, ValueError):
    """A request (prompt, sampling values, options) is invalid."""


class UnsupportedEnvironmentError(SaguaroError):
    """This machine, torch build or setting cannot run what was asked (a CPU kernel, a device)."""


class ClosedError(SaguaroError):
    """The LLM or Engine was closed (its draft worker shut down); make a new one."""
