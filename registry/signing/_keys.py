"""The server's private keys, one file per role, in a directory only the server can read.

ModelDrop signs with five separate Ed25519 keys — the four TUF roles plus the manifest
("director") key — so that losing one online key (timestamp, snapshot, manifest) does not
let an attacker forge what the others vouch for, and so each can be rotated on its own.

The directory is the whole state: several server processes share it, so nothing is cached
beyond "this file, at this inode and mtime, parsed to this signer". Creation and rotation
use link/rename so a concurrent reader always sees either the old or the new key file,
never a missing one (a missing file means "kept offline", not "generate a new one").

Layout (directory 0700, files 0600, PEM PKCS#8, unencrypted)::

    keystore.json               marker: initial generation finished
    <role>.pem                  the active key of the role
    <role>.next.pem             a rotation in progress: the key being introduced
    retired/<role>.<keyid>.pem  keys replaced by a published rotation
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signature, SSlibKey

from registry._fsync import fsync_dir

from .errors import KeyStoreError, MissingSigningKeyError, UnknownRoleError

__all__ = ["KEY_ROLES", "KeyStore"]

logger = logging.getLogger(__name__)

#: Every role the key store holds a key for: the TUF top-level roles and the manifest key.
KEY_ROLES: tuple[str, ...] = ("root", "targets", "snapshot", "timestamp", "manifest")

_MARKER = "keystore.json"
_RETIRED = "retired"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _check_role(role: str) -> str:
    if role not in KEY_ROLES:
        raise UnknownRoleError(f"unknown role {role!r}; expected one of {', '.join(KEY_ROLES)}")
    return role


class KeyStore:
    """Ed25519 signing keys per role, kept as files under ``keys_dir``.

    Keys are generated on first use if the directory has never been initialised.
    After that a missing role file is treated as an offline key: asking for its signer
    raises :class:`MissingSigningKeyError` rather than silently minting a new key that no
    client trusts.
    """

    def __init__(self, keys_dir: Path | str):
        self._dir = Path(keys_dir)
        self._lock = threading.RLock()
        self._ready = False
        # path -> ((inode, mtime_ns, size), signer); re-parsed when the file changes
        self._cache: dict[Path, tuple[tuple[int, int, int], CryptoSigner]] = {}

    def __repr__(self) -> str:
        return f"KeyStore(keys_dir={str(self._dir)!r})"

    @property
    def keys_dir(self) -> Path:
        return self._dir

    # -- public API -------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the directory and generate any missing keys unless already initialised."""
        with self._lock:
            if self._ready:
                return
            self._prepare_dir(self._dir)
            self._prepare_dir(self._dir / _RETIRED)
            if not (self._dir / _MARKER).exists():
                for role in KEY_ROLES:
                    if self._create_if_absent(self._active_path(role), CryptoSigner.generate_ed25519()):
                        logger.info("generated %s key %s", role, self._load(self._active_path(role)).public_key.keyid)
                self._create_marker()
            self._ready = True

    def signer(self, role: str) -> CryptoSigner:
        """Return the active signer of ``role``.

        Raises:
            UnknownRoleError: ``role`` is not one of :data:`KEY_ROLES`.
            MissingSigningKeyError: the key file is absent (kept offline).
        """
        self.ensure()
        path = self._active_path(_check_role(role))
        signer = self._load(path)
        if signer is None:
            raise MissingSigningKeyError(f"no private {role} key on this server ({path.name} is absent)")
        return signer

    def public_key(self, role: str) -> SSlibKey:
        """Return the public half of the active key of ``role``."""
        return self.signer(role).public_key

    def pending_key(self, role: str) -> SSlibKey | None:
        """Return the key being introduced by an unfinished rotation of ``role``, if any."""
        self.ensure()
        signer = self._load(self._pending_path(_check_role(role)))
        return signer.public_key if signer else None

    def signer_for_keyid(self, keyid: str) -> CryptoSigner | None:
        """Find a usable (active or pending, never retired) signer with this key id."""
        self.ensure()
        for role in KEY_ROLES:
            for path in (self._active_path(role), self._pending_path(role)):
                signer = self._load(path)
                if signer is not None and signer.public_key.keyid == keyid:
                    return signer
        return None

    def add_key(self, role: str) -> SSlibKey:
        """Introduce a new key for ``role`` next to the active one and return its public key.

        Idempotent: if a rotation was started and not finished, its pending key is returned
        again, so a retried rotation publishes the same new key.
        """
        self.ensure()
        path = self._pending_path(_check_role(role))
        with self._lock:
            if self._create_if_absent(path, CryptoSigner.generate_ed25519()):
                logger.info("added pending %s key %s", role, self._load(path).public_key.keyid)
            return self._load(path).public_key

    def activate_pending(self, role: str) -> SSlibKey:
        """Make the pending key of ``role`` the active one; retire the old active key.

        Call only after the rotation is published. The old key is hard-linked into
        ``retired/`` before the pending file atomically replaces it, so the role file is
        never missing for a concurrent reader.
        """
        self.ensure()
        active, pending = self._active_path(_check_role(role)), self._pending_path(role)
        with self._lock:
            new = self._load(pending)
            if new is None:
                raise KeyStoreError(f"no pending {role} key to activate")
            old = self._load(active)
            if old is not None:
                retired = self._dir / _RETIRED / f"{role}.{old.public_key.keyid}.pem"
                try:
                    os.link(active, retired)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise KeyStoreError(f"cannot retire the {role} key: {e.strerror}") from e
            os.replace(pending, active)
            fsync_dir(self._dir)
            logger.info(
                "activated %s key %s (retired %s)",
                role,
                new.public_key.keyid,
                old.public_key.keyid if old else "none",
            )
            return new.public_key

    def retired_keyids(self, role: str) -> list[str]:
        """Key ids of the keys of ``role`` that a published rotation replaced."""
        self.ensure()
        prefix = f"{_check_role(role)}."
        return sorted(
            p.name[len(prefix) : -len(".pem")]
            for p in (self._dir / _RETIRED).glob(f"{role}.*.pem")
        )

    # -- files ------------------------------------------------------------------------

    def _active_path(self, role: str) -> Path:
        return self._dir / f"{role}.pem"

    def _pending_path(self, role: str) -> Path:
        return self._dir / f"{role}.next.pem"

    @staticmethod
    def _prepare_dir(path: Path) -> None:
        try:
            path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            if path.stat().st_mode & 0o077:
                logger.warning("tightening permissions of key directory %s to 0700", path)
                os.chmod(path, _DIR_MODE)
        except OSError as e:
            raise KeyStoreError(f"cannot prepare key directory {path}: {e.strerror}") from e

    def _create_if_absent(self, path: Path, signer: CryptoSigner) -> bool:
        """Write ``signer``'s private key to ``path`` unless the file exists; True if written.

        Written to a temporary file first and hard-linked into place: the link fails if
        another process won the race, and nobody ever reads a half-written key.
        """
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                os.fchmod(fd, _FILE_MODE)
                os.write(fd, signer.private_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        except OSError as e:
            raise KeyStoreError(f"cannot write key file {path.name}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _create_marker(self) -> None:
        marker = self._dir / _MARKER
        tmp = marker.with_name(f".{_MARKER}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"format": 1, "roles": list(KEY_ROLES)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        fsync_dir(self._dir)

    def _load(self, path: Path) -> CryptoSigner | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
        if st.st_mode & 0o077:
            logger.warning("key file %s is readable by group/others; tightening to 0600", path.name)
            os.chmod(path, _FILE_MODE)
        try:
            private_key = load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            # never include the file content in the message
            raise KeyStoreError(f"key file {path.name} is unreadable or not a PEM private key") from e
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeyStoreError(f"key file {path.name} is not an Ed25519 key")
        signer = _Ed25519Signer(private_key, SSlibKey.from_crypto(private_key.public_key()))
        with self._lock:
            self._cache[path] = (stamp, signer)
        return signer


class _Ed25519Signer(CryptoSigner):
    """``CryptoSigner`` for an Ed25519 key, signing without its per-call
    ``dataclasses.astuple`` of the signing arguments (Ed25519 takes none): that was two thirds
    of a manifest signature's cost (docs/benchmarks.md). Ed25519 is deterministic, so the
    signature is the same bytes ``CryptoSigner.sign`` gives (tests/test_signing.py)."""

    def __init__(self, private_key: Ed25519PrivateKey, public_key: SSlibKey) -> None:
        super().__init__(private_key, public_key)
        self._ed25519 = private_key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self.public_key.keyid, self._ed25519.sign(payload).hex())
