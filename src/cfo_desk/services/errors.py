"""Errors raised by services; their messages are written for the analyst and shown as-is."""


class ServiceError(ValueError):
    """A request the service refused; `str(error)` is a complete sentence for the user."""


class NotFound(ServiceError):
    """The workspace, dataset, thread or message does not exist (any more)."""


class InvalidInput(ServiceError):
    """A name or value the user gave is not acceptable."""


class Conflict(ServiceError):
    """The request clashes with what exists, e.g. a duplicate name."""
