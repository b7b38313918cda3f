"""Tracing, if asked for: OpenTelemetry loaded only when an OTLP endpoint is set.

With no endpoint nothing of OpenTelemetry is imported and nothing is added to a request's path.
With one, `sidecar.otel` (the `tracing` extra: opentelemetry-api, -sdk and the OTLP/HTTP
exporter) records the spans. An endpoint set where the extra is not installed is a warning, not
a failure: the variable is often set for a whole pod (for the app beside the sidecar), and a model
server that crash-loops over missing telemetry would cost more than the traces.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sidecar.config import Tracing

if TYPE_CHECKING:
    from sidecar.otel import Tracer

logger = logging.getLogger(__name__)

EXTRA = "model-sidecar[tracing]"


def start_tracing(settings: Tracing | None) -> Tracer | None:
    """The tracer that exports to `settings.endpoint`, or None: no endpoint, or no OpenTelemetry
    installed (then logged as a warning once)."""
    if settings is None:
        return None
    try:
        from sidecar.otel import Tracer
    except ImportError as exc:
        logger.warning(
            "tracing is off: OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not"
            " installed (%s missing); install %s, which the images include",
            exc.name or "a module",
            EXTRA,
        )
        return None
    tracer = Tracer(settings)
    logger.info("tracing: spans go to %s", settings.public()["endpoint"])
    return tracer
