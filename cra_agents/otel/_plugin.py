"""The runtime's ``otel=`` plug-in, importable without OpenTelemetry installed.

The runtime builds its observer through :func:`observer_from` by name (see
:mod:`cra_agents.runtime`); the OpenTelemetry API and SDK are imported only when ``otel=`` turns
spans on, and their absence is reported as the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cra_agents._exceptions import MissingDependencyError

if TYPE_CHECKING:
    from cra_agents.otel._config import OTelSpec
    from cra_agents.otel._observer import Telemetry

__all__ = ["missing_otel", "observer_from"]


def observer_from(spec: OTelSpec) -> Telemetry | None:
    """The runtime's ``otel=`` plug-in (see :func:`~cra_agents.otel.telemetry_from`).

    Raises:
        ConfigurationError: an unknown endpoint scheme.
        MissingDependencyError: OpenTelemetry is not installed: the ``otel`` extra, or
            ``otel-grpc`` for a ``grpc://`` endpoint.
    """
    if spec is None or spec is False:
        return None
    try:
        from cra_agents.otel._config import telemetry_from
    except ModuleNotFoundError as exc:
        grpc = isinstance(spec, str) and spec.lower().startswith("grpc")
        raise missing_otel(exc, "otel-grpc" if grpc else "otel") from exc
    return telemetry_from(spec)


def missing_otel(exc: ModuleNotFoundError, extra: str = "otel") -> Exception:
    """The error for ``exc``: a :class:`MissingDependencyError` if OpenTelemetry is missing.

    Any other missing module is a bug, not a missing extra: ``exc`` itself is returned.
    """
    if (exc.name or "").partition(".")[0] != "opentelemetry":
        return exc
    return MissingDependencyError(
        "OpenTelemetry spans (otel=)", package="opentelemetry-api", extra=extra
    )
