"""Errors raised by the pure delivery logic.

Every error carries a stable ``code`` (what clients and the SDK switch on) and an HTTP
``status`` so the API layer can turn it into problem+json without a lookup table of its
own. Delivery errors are all caused by bad input — a malformed install id, a rule
definition that does not parse — so they are 400s; nothing here is a server fault.
"""

from __future__ import annotations

__all__ = [
    "DeliveryError",
    "InvalidBucketingError",
    "InvalidDeviceError",
    "InvalidGuardrailError",
    "InvalidInstallIdError",
    "InvalidTargetingError",
]


class DeliveryError(Exception):
    """Base class: bad input to delivery logic.

    Attributes:
        code: Stable machine-readable identifier; never reworded once published.
        status: HTTP status the API layer should answer with.
        message: Human-readable explanation naming the offending field or value.
    """

    code: str = "delivery_error"
    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInstallIdError(DeliveryError):
    """The install id is not lowercase ASCII ``[a-z0-9][a-z0-9-]{7,63}``."""

    code = "invalid_install_id"


class InvalidDeviceError(DeliveryError):
    """The device description is unusable (unknown platform, wrong types)."""

    code = "invalid_device"


class InvalidBucketingError(DeliveryError):
    """Arm weights, coverage or rollout percentage are out of range."""

    code = "invalid_bucketing"


class InvalidTargetingError(DeliveryError):
    """A targeting rule definition does not validate; the message names the field."""

    code = "invalid_targeting"


class InvalidGuardrailError(DeliveryError):
    """A guardrail expression does not parse; the message quotes the expression."""

    code = "invalid_guardrail"
