"""Which converted variant of a model version a device should download: the SDK's rule.

The rule (measured latency on the device class when at least two candidates have it, else
the smallest servable variant of the platform's format; a pin answers only itself) is
implemented once, in ``client_sdk/_variants.py`` (``client_sdk.rules``), so a device that
decides locally from a signed ruleset picks exactly the variant this server would put in
its manifest; ``conformance/variants.json`` pins it. This module re-exports it with the
server's :class:`~registry.delivery.errors.InvalidDeviceError` (same code).
docs/delivery.md ("Variant choice") explains why the rule uses only what was measured.
"""

from __future__ import annotations

from client_sdk import rules as _rules

from .errors import sdk_rules

__all__ = ["FORMAT_BY_PLATFORM", "choose_variant", "platform_format"]

FORMAT_BY_PLATFORM = _rules.FORMAT_BY_PLATFORM
platform_format = sdk_rules(_rules.platform_format)
choose_variant = sdk_rules(_rules.choose_variant)
