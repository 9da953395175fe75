"""The exceptions ETL steps raise; the API maps them to task errors, never to HTTP codes."""


class EtlError(Exception):
    """An ETL step failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class StepStopped(EtlError):
    """The step stopped because a stop was requested."""


class UnknownStep(EtlError):
    """No step is registered under that name."""


class CommandFailed(EtlError):
    """An external command exited with a non-zero status."""


class DiagnosticFailure(EtlError):
    """The diagnostic step failed on purpose."""


class DataError(EtlError):
    """The data does not have what the step expects."""


class TransientError(EtlError):
    """A failure worth retrying later (a service down or slow); never a parameter or data error."""


class PortalUnavailable(TransientError):
    """The portal did not answer or answered that it is unavailable."""
