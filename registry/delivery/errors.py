"""Errors raised by the pure delivery logic, in the server's one hierarchy (``registry.errors``).

Delivery errors are all caused by bad input (a malformed install id, a rule definition
that does not parse), so they are 400s; nothing here is a server fault.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from client_sdk import errors as sdk_errors
from registry.errors import ModelDropError

__all__ = [
    "DeliveryError",
    "InvalidBucketingError",
    "InvalidDeviceError",
    "InvalidGuardrailError",
    "InvalidInstallIdError",
    "InvalidTargetingError",
    "RulesetNotFoundError",
    "sdk_rules",
]

P = ParamSpec("P")
R = TypeVar("R")


class DeliveryError(ModelDropError):
    """Base class: bad input to delivery logic; ``detail`` names the offending field or value."""

    code, status, title = "delivery_error", 400, "Delivery error"


class InvalidInstallIdError(DeliveryError):
    """The install id is not lowercase ASCII ``[a-z0-9][a-z0-9-]{7,63}``."""

    code, title = "invalid_install_id", "Invalid install id"


class InvalidDeviceError(DeliveryError):
    """The device description is unusable (unknown platform, wrong types)."""

    code, title = "invalid_device", "Invalid device"


class InvalidBucketingError(DeliveryError):
    """Arm weights, coverage or rollout percentage are out of range."""

    code, title = "invalid_bucketing", "Invalid bucketing"


class InvalidTargetingError(DeliveryError):
    """A targeting rule definition does not validate; the message names the field."""

    code, title = "invalid_targeting", "Invalid targeting"


class RulesetNotFoundError(ModelDropError):
    """No ruleset is published for this model and channel (it has had no release yet)."""

    code, status, title = "ruleset_not_found", 404, "Ruleset not found"


class InvalidGuardrailError(DeliveryError):
    """A guardrail expression does not parse; the message quotes the expression."""

    code, title = "invalid_guardrail", "Invalid guardrail"


# The SDK's pure rules (client_sdk.rules) raise the SDK's own errors, which carry the same
# stable codes; the server re-raises them as its own classes, so the API answers the codes
# of docs/http-api.md and callers catch registry errors only.
_BY_SDK_CODE: dict[str, type[DeliveryError]] = {
    cls.code: cls for cls in (InvalidInstallIdError, InvalidDeviceError,
                              InvalidBucketingError, InvalidTargetingError)
}


def sdk_rules(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap a ``client_sdk.rules`` function so its errors become the server's (same code)."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except sdk_errors.ValidationError as e:
            cls = _BY_SDK_CODE.get(e.code)
            if cls is None:
                raise
            raise cls(e.detail) from None

    return call
