"""How long each role's metadata stays valid, and when the periodic job re-signs it.

Short lifetimes bound how long an attacker can freeze a client on stale metadata
(timestamp: a day); longer ones are for roles whose keys should be touched rarely.
Re-signing at half the lifetime leaves the other half as slack for a failed job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["ExpiryPolicy", "as_utc", "utc_now"]

_DAY = 24 * 60 * 60


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Treat a naive datetime as UTC (TUF's convention); convert aware ones to UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class ExpiryPolicy:
    """Metadata lifetimes in seconds, and the refresh margin as a fraction of a lifetime."""

    timestamp: int = 1 * _DAY  # seconds
    snapshot: int = 7 * _DAY  # seconds
    targets: int = 90 * _DAY  # seconds
    root: int = 365 * _DAY  # seconds
    refresh_fraction: float = 0.5  # re-sign when less than this share of the lifetime is left

    def __post_init__(self) -> None:
        for role in ("timestamp", "snapshot", "targets", "root"):
            if self.lifetime(role) <= 0:
                raise ValueError(f"{role} lifetime must be positive")
        if not 0 < self.refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")

    def lifetime(self, role: str) -> int:
        return int(getattr(self, role))

    def expires(self, role: str, now: datetime) -> datetime:
        """The expiry to write into freshly signed ``role`` metadata signed at ``now``."""
        return (now + timedelta(seconds=self.lifetime(role))).replace(microsecond=0)

    def needs_refresh(self, role: str, expires: datetime, now: datetime) -> bool:
        """True if ``role`` metadata expiring at ``expires`` is inside the refresh margin."""
        return expires - now <= timedelta(seconds=self.lifetime(role) * self.refresh_fraction)
