"""Units grouped by arm and reduced to the arrays the statistics need, in one pass."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from registry.reports._inputs import ExperimentDef, UnitSummary

__all__ = ["Arm", "collect"]


@dataclass
class Arm:
    """One arm's units reduced to the arrays the tests need."""

    name: str
    units: list[UnitSummary] = field(default_factory=list)
    device_latencies: list[np.ndarray] = field(default_factory=list)
    invalid_latencies: int = 0
    rated: list[int] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)

    @property
    def assigned(self) -> int:
        return len(self.units)

    def count(self, flag: str) -> int:
        return sum(1 for u in self.units if getattr(u, flag))

    @cached_property
    def log_means(self) -> np.ndarray:
        return np.array([np.log(d).mean() for d in self.device_latencies])


def collect(exp: ExperimentDef, units: Iterable[UnitSummary]) -> tuple[dict[str, Arm], Counter]:
    """Group units by arm; units of arms outside the experiment are only counted."""
    arms = {name: Arm(name) for name in exp.arms}
    unknown: Counter = Counter()
    for u in units:
        arm = arms.get(u.arm)
        if arm is None:
            unknown[u.arm] += 1
            continue
        if u.rated < 0 or not 0 <= u.correct <= u.rated:
            raise ValueError(
                f"unit {u.install_id!r}: need 0 <= correct <= rated, got {u.correct}/{u.rated}"
            )
        arm.units.append(u)
        lat = np.asarray(u.latencies_ms, dtype=float)
        valid = lat[np.isfinite(lat) & (lat > 0)]
        arm.invalid_latencies += len(lat) - len(valid)
        if len(valid):
            arm.device_latencies.append(valid)
        if u.rated > 0:
            arm.rated.append(u.rated)
            arm.correct.append(u.correct)
    return arms, unknown
