"""What the report layer is given: per-unit aggregates, computed elsewhere.

The integrator reduces the telemetry tables to one `UnitSummary` per install id *as assigned*
(intent-to-treat) and passes them with the experiment's definition. Keeping the statistics on
these small, already-aggregated records is what lets this package stay free of the database
and of Flask, and what makes every number reproducible from a list of plain objects in a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

__all__ = ["ExperimentDef", "UnitSummary"]


@dataclass
class UnitSummary:
    """One install id in the arm it was assigned to, whatever happened afterwards.

    Attributes:
        install_id: The unit of randomisation.
        arm: The arm the bucketing assigned, not the model the device ended up running.
        assigned_day: UTC day of the first assignment (drives the daily-assignment chart).
        downloaded: At least one ``download_finished``.
        download_failed: A ``download_failed`` with no later ``download_finished``.
        installed: At least one ``install_ok``.
        install_failed: At least one ``install_failed`` (the model did not load).
        crashed: At least one ``crash`` event.
        active: At least one ``inference`` event.
        latencies_ms: This device's inference latencies, possibly a capped sample.
        rated: Inference events that carry ``correct``.
        correct: Inference events with ``correct == true``.
    """

    install_id: str
    arm: str
    assigned_day: date
    downloaded: bool = False
    download_failed: bool = False
    installed: bool = False
    install_failed: bool = False
    crashed: bool = False
    active: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    rated: int = 0
    correct: int = 0


@dataclass
class ExperimentDef:
    """The configured experiment.

    Attributes:
        name: Experiment name (user-supplied; escaped wherever it is rendered).
        arms: Arm names; the first is the control every other arm is compared with.
        weights: Configured traffic weights, one per arm, any positive scale (e.g. basis points).
        guardrail_metrics: Metric names that act as guardrails: reported uncorrected for
            multiple comparisons. Accepts report metric names and the guardrail-engine
            aliases (``load_failure_rate``, ``p50_latency_ratio``, ``p90_latency_ratio``).
    """

    name: str
    arms: list[str]
    weights: list[int]
    guardrail_metrics: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if len(self.arms) < 2:
            raise ValueError("an experiment needs a control arm and at least one other arm")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arm names must be unique, got {self.arms!r}")
        if len(self.weights) != len(self.arms):
            raise ValueError(
                f"{len(self.arms)} arms but {len(self.weights)} weights; give one weight per arm"
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights!r}")
