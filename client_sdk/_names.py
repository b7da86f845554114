"""Model and channel names: one rule, shared by the SDK and the server.

Names become URL query values, directory names on the device and TUF target path
segments, so they are lowercase ASCII: Apple's and Windows' default file systems are case
insensitive, and "Digits" and "digits" must not share (or fight over) one directory. The
server enforces the same patterns (``conformance/names.json`` pins both sides).
"""

from __future__ import annotations

import re

from .errors import InvalidNameError

__all__ = ["CHANNEL_RE", "MODEL_NAME_RE", "validate_channel", "validate_model_name"]

MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # 1-64 characters
CHANNEL_RE = re.compile(r"[a-z0-9-]{1,32}")


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is 1-64 characters of ``[a-z0-9._-]`` starting with a letter or digit.

    Raises:
        InvalidNameError: for anything else, before any request is made.
    """
    if not isinstance(name, str) or MODEL_NAME_RE.fullmatch(name) is None:
        raise InvalidNameError(
            f"model name {name!r} is invalid: use 1-64 characters from [a-z0-9._-], "
            "starting with a letter or digit")
    return name


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is 1-32 characters of ``[a-z0-9-]`` (e.g. ``production``).

    Raises:
        InvalidNameError: for anything else, before any request is made.
    """
    if not isinstance(channel, str) or CHANNEL_RE.fullmatch(channel) is None:
        raise InvalidNameError(
            f"channel {channel!r} is invalid: use 1-32 characters from [a-z0-9-], "
            "e.g. 'production'")
    return channel
