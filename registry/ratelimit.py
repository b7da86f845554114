"""Budgets and rate limits: how much one token, client IP or install id may ask of the server.

Two mechanisms share one counter storage (``settings.rate_limit_storage_url``: in memory for
the embedded default, Redis in the scale mode so every web process counts together):

* **Telemetry budgets** count *events*, not requests: a batch of 1,000 events costs 1,000.
  Per client IP the whole batch is refused (429, ``Retry-After``) once the IP is over its
  budget; per install id only that device's events are dropped (rejected by index, like any
  other bad event), so one noisy device cannot cost its neighbours behind the same NAT.
* **Request rate limits** (flask-limiter) on every write route, per token and per client IP.

A budget is a fence against floods, not the defence against forged telemetry: guardrails
count only devices the server served (registry/store/_served.py), whatever gets through.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from flask import Flask, current_app
from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from registry.config import Settings
from registry.errors import RateLimitedError

__all__ = ["TelemetryBudget", "init_app", "telemetry_budget"]

EXTENSION = "modeldrop.ratelimit"


class TelemetryBudget:
    """Events per install id per hour and per client IP per minute (0 disables either)."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = FixedWindowRateLimiter(storage_from_string(settings.rate_limit_storage_url))
        self._per_install = (RateLimitItemPerHour(settings.telemetry_events_per_install)
                             if settings.telemetry_events_per_install > 0 else None)
        self._per_ip = (RateLimitItemPerMinute(settings.telemetry_events_per_ip)
                        if settings.telemetry_events_per_ip > 0 else None)

    def charge_ip(self, client_ip: str, events: int) -> None:
        """Count ``events`` against the IP's budget.

        Raises:
            RateLimitedError: the IP is over budget; nothing of the batch is stored.
        """
        if self._per_ip is None or events <= 0:
            return
        if not self._limiter.hit(self._per_ip, "telemetry-ip", client_ip, cost=events):
            reset = self._limiter.get_window_stats(self._per_ip, "telemetry-ip", client_ip).reset_time
            raise RateLimitedError(
                f"this client sent more than {self._per_ip.amount} telemetry events in a "
                "minute; send the batch again later", retry_after=math.ceil(reset - time.time()),
                limit=self._per_ip.amount, scope="client_ip")

    def over_budget(self, install_ids: list[str]) -> set[str]:
        """Charge each install id for its events in this batch; returns those now over budget
        (their events are dropped, the rest of the batch is stored)."""
        if self._per_install is None:
            return set()
        return {install_id for install_id, n in Counter(install_ids).items()
                if not self._limiter.hit(self._per_install, "telemetry-install", install_id,
                                         cost=n)}

    @property
    def per_install(self) -> int:
        return self._per_install.amount if self._per_install is not None else 0


def init_app(app: Flask, settings: Settings) -> None:
    """Attach the budgets (and the request limiter) to the app."""
    app.extensions[EXTENSION] = TelemetryBudget(settings)


def telemetry_budget(app: Any = None) -> TelemetryBudget:
    return (app or current_app).extensions[EXTENSION]
