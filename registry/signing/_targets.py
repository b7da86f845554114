"""What a servable artifact looks like to TUF, and which target paths are acceptable.

Target paths end up as URL paths and, in the blob store and on devices, as file paths.
Rejecting anything but clean relative POSIX paths here means no later layer has to think
about ``..``, absolute paths or Windows separators.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from securesystemslib.formats import encode_canonical

from .errors import InvalidTargetError, InvalidTargetPathError

__all__ = ["TargetSpec", "consistent_target_name", "validate_target_path", "variant_target_path"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PATH = 1024  # characters; well above the wire-format paths, far below URL limits


def variant_target_path(model: str, version: int, variant: str, extension: str) -> str:
    """The TUF target path a variant is listed under once it is published."""
    return f"{model}/{version}/{variant}.{extension}"


def validate_target_path(path: str) -> str:
    """Return ``path`` if it is a clean relative POSIX path, else raise.

    Raises:
        InvalidTargetPathError: empty, absolute, backslash, empty/``.``/``..`` segment,
            control characters, or longer than 1024 characters.
    """
    if not isinstance(path, str) or not path:
        raise InvalidTargetPathError("target path must be a non-empty string")
    if len(path) > _MAX_PATH:
        raise InvalidTargetPathError(f"target path is longer than {_MAX_PATH} characters")
    if path.startswith("/"):
        raise InvalidTargetPathError(f"target path must be relative: {path!r}")
    if "\\" in path:
        raise InvalidTargetPathError(f"target path must not contain a backslash: {path!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InvalidTargetPathError("target path must not contain control characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidTargetPathError(f"target path has an empty, '.' or '..' segment: {path!r}")
    return path


def consistent_target_name(path: str, sha256: str) -> str:
    """The file name a TUF client fetches with consistent snapshots: ``dir/<sha256>.<name>``."""
    directory, _, name = validate_target_path(path).rpartition("/")
    prefixed = f"{sha256}.{name}"
    return f"{directory}/{prefixed}" if directory else prefixed


@dataclass(frozen=True)
class TargetSpec:
    """One artifact to publish: its TUF path, exact length, sha256 and ``custom`` data.

    ``custom`` must be canonical-JSON-able (no floats): it is signed as part of targets.
    """

    path: str
    length: int
    sha256: str
    custom: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> TargetSpec:
        """Return a normalised copy (lower-case hex, private copy of ``custom``) or raise.

        Raises:
            InvalidTargetPathError: bad path.
            InvalidTargetError: bad length, sha256 or custom.
        """
        validate_target_path(self.path)
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise InvalidTargetError(f"length of {self.path!r} must be a non-negative integer")
        digest = self.sha256.lower() if isinstance(self.sha256, str) else ""
        if not _SHA256.fullmatch(digest):
            raise InvalidTargetError(f"sha256 of {self.path!r} must be 64 hex characters")
        if not isinstance(self.custom, dict):
            raise InvalidTargetError(f"custom of {self.path!r} must be an object")
        try:
            encode_canonical(self.custom)
        except Exception as e:  # securesystemslib raises FormatError for floats etc.
            raise InvalidTargetError(
                f"custom of {self.path!r} is not canonical JSON (no floats, string keys only)"
            ) from e
        return TargetSpec(self.path, self.length, digest, copy.deepcopy(self.custom))
