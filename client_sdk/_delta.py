"""Delta updates: rebuild the new artifact from the installed one plus a bsdiff4 patch.

The patch is verified like any artifact (TUF entry, length, sha256) and the *result* must
hash to the manifest's artifact sha256 — the patch is only a cheaper way to obtain bytes
whose identity was already verified. Any failure falls back to the full download.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from ._store import atomic_write_bytes
from .errors import DeltaPatchError

__all__ = ["SUPPORTED_ALGORITHMS", "apply_patch"]

SUPPORTED_ALGORITHMS = frozenset({"bsdiff4"})


def apply_patch(base: Path, patch: Path, *, sha256: str, length: int, out: Path) -> Path:
    """Write ``base`` patched by ``patch`` to ``out`` if it hashes to ``sha256``.

    Raises:
        DeltaPatchError: the patch does not apply or produces other bytes.
    """
    try:
        import bsdiff4

        result = bsdiff4.patch(base.read_bytes(), patch.read_bytes())
    except Exception as e:  # bsdiff4 raises ValueError/RuntimeError on corrupt patches
        raise DeltaPatchError(f"patch does not apply: {e}") from e
    if len(result) != length:
        raise DeltaPatchError(f"patched file has {len(result)} bytes, expected {length}")
    if not hmac.compare_digest(hashlib.sha256(result).hexdigest(), sha256):
        raise DeltaPatchError("patched file does not hash to the verified sha256")
    atomic_write_bytes(out, result)
    return out
