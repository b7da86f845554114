"""Errors of the telemetry endpoints, in the server's one error hierarchy."""

from __future__ import annotations

from registry.errors import ModelDropError

__all__ = ["TelemetryBatchTooLargeError"]


class TelemetryBatchTooLargeError(ModelDropError):
    """More events (or bytes) in one ``POST /v1/telemetry`` than the server takes.

    413, so the SDK splits the batch in halves and sends them again instead of dropping it.
    """

    code, status, title = "telemetry_batch_too_large", 413, "Telemetry batch too large"
