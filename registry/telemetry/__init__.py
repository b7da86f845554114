"""Device telemetry: validated ingestion, per-device latency, and the inputs of experiment
reports and guardrails.

``ingest`` validates batches without I/O; ``service`` stores them and builds reports through
``registry.store`` (the only database code) and ``registry.reports`` (the statistics);
``metrics`` feeds the delivery guardrail engine. docs/reports.md describes the whole path.
"""

from registry.telemetry.errors import TelemetryBatchTooLargeError
from registry.telemetry.ingest import EVENT_KINDS, validate_batch

__all__ = ["EVENT_KINDS", "TelemetryBatchTooLargeError", "validate_batch"]
