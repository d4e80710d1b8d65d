"""The one exception hierarchy of labkit.

Every error the kit raises on purpose derives from :class:`LabkitError`; each stage of the
data flow has its own subclass, so a caller can catch one stage or all of them::

    LabkitError
    ├── ConfigError            bad parameter values, caught before anything starts
    ├── MissingDependencyError an optional package is absent (message has the install command)
    ├── ClusterError           starting, connecting to or stopping a Ray cluster
    ├── ModelError             making, finding or hashing a model
    ├── DeploymentError        building or deploying the Serve application
    │   └── PlacementError     TP x PP devices that the cluster cannot place
    ├── LoadGenError           the load generator (bad endpoint, bad workload)
    ├── TelemetryError         sampling engine / process / GPU activity
    ├── RecordError            writing or validating a verification log
    └── GradingError           reading logs and writing a gradebook

Structured errors keep their facts in attributes (``value``, ``url``, ``status``) as well as in
the message, so tests and the CLI do not have to parse text.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ClusterError",
    "ConfigError",
    "DeploymentError",
    "GradingError",
    "LabkitError",
    "LoadGenError",
    "MissingDependencyError",
    "ModelError",
    "PlacementError",
    "RecordError",
    "TelemetryError",
]


class LabkitError(Exception):
    """Base class of every error raised by labkit."""


class ConfigError(LabkitError, ValueError):
    """A parameter has a value the kit cannot use.

    Parameters
    ----------
    message : str
        The full message: the bad value, the allowed values and the fix.
    field : str, optional
        Name of the offending parameter.
    value : object, optional
        The offending value.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class MissingDependencyError(LabkitError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""


class ClusterError(LabkitError):
    """Starting, connecting to or stopping a Ray cluster failed."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class ModelError(LabkitError):
    """A model could not be made, found or hashed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class DeploymentError(LabkitError):
    """The Serve application could not be built or deployed."""


class PlacementError(DeploymentError):
    """A replica's TP x PP devices cannot be placed on the cluster.

    Parameters
    ----------
    message : str
        What does not fit and how to fix it.
    needed : dict, optional
        The resources one replica needs.
    available : dict, optional
        What the cluster offers.
    """

    def __init__(
        self,
        message: str,
        *,
        needed: dict[str, float] | None = None,
        available: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(message)
        self.needed = needed or {}
        self.available = available or {}


class LoadGenError(LabkitError):
    """The load generator cannot run (bad endpoint, bad workload, bad prompt file)."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TelemetryError(LabkitError):
    """Sampling engine, process or GPU activity failed."""


class RecordError(LabkitError):
    """A verification log could not be built, validated or written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class GradingError(LabkitError):
    """Grading a folder of logs failed as a whole (single bad logs are findings, not errors)."""
