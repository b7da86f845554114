"""The TUF image repository: every servable artifact, signed so any TUF client can verify it.

This is the "image repository" half of ModelDrop's Uptane-style design: it lists what
exists (path, length, sha256, custom) and says nothing about which device gets what —
that is the manifest's job. The server is the only writer, but possibly from several
processes, so every write is one read-modify-write of the stored chain under the
caller-supplied ``lock`` (a cross-process lock in production, a thread lock by default).

Signed bytes are stored once and served unchanged; nothing here holds state between
calls apart from the key-file cache in :class:`KeyStore`.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Root, TargetFile

from ._chain import Chain, ChainWriter
from ._keys import KEY_ROLES, KeyStore
from ._manifest import MANIFEST_EXTENSION, manifest_extension, sign_document
from ._policy import ExpiryPolicy, as_utc, utc_now
from ._store import MetadataStore, is_metadata_name
from ._targets import TargetSpec, validate_target_path
from .errors import (
    InvalidTargetPathError,
    MissingSigningKeyError,
    NotBootstrappedError,
    TargetNotFoundError,
    UnknownRoleError,
)

__all__ = ["ImageRepository", "ROTATABLE_ROLES"]

logger = logging.getLogger(__name__)

#: Roles :meth:`ImageRepository.rotate_key` accepts.
ROTATABLE_ROLES: tuple[str, ...] = KEY_ROLES
_TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
# What must be re-published, in order, when a role's key changes.
_RESIGNED_ON_ROTATION: dict[str, tuple[str, ...]] = {
    "targets": ("targets", "snapshot", "timestamp"),
    "snapshot": ("snapshot", "timestamp"),
    "timestamp": ("timestamp",),
}


class ImageRepository:
    """Publishes and serves the TUF metadata for all artifacts, and signs manifests.

    Args:
        keys: the server's signing keys.
        store: where signed metadata bytes are kept (shared by all server processes).
        lock: returns a context manager held around every read-modify-write; pass a
            cross-process lock when several processes share ``store``. Each write method
            takes it itself and it need not be reentrant: never call a write method
            (``bootstrap`` included) while already holding it, or the call deadlocks.
        expiry: metadata lifetimes.
        clock: "now" for expiry computation (UTC-aware); tests and replays pass their own.
    """

    def __init__(
        self,
        keys: KeyStore,
        store: MetadataStore,
        *,
        lock: Callable[[], AbstractContextManager[Any]] | None = None,
        expiry: ExpiryPolicy = ExpiryPolicy(),
        clock: Callable[[], datetime] = utc_now,
    ):
        self._keys = keys
        self._store = store
        self._expiry = expiry
        self._clock = lambda: as_utc(clock())
        thread_lock = threading.Lock()
        self._lock = lock or (lambda: thread_lock)
        self._chain = ChainWriter(keys, store, expiry)

    def __repr__(self) -> str:
        return f"ImageRepository(keys={self._keys!r}, store={self._store!r})"

    # -- reading (no lock: files are written in dependency order) ----------------------

    def get_metadata(self, name: str) -> bytes | None:
        """Stored bytes for ``/tuf/metadata/<name>``, or None (answer 404) if unknown."""
        if not is_metadata_name(name):
            return None
        return self._store.get(name)

    def trusted_root(self) -> bytes:
        """The newest root's bytes: what a freshly installed client should pin.

        Raises:
            NotBootstrappedError: no root yet.
        """
        loaded = self._chain.load_root()
        if loaded is None:
            raise NotBootstrappedError("the TUF repository is not bootstrapped")
        return loaded[1]

    def target_info(self, path: str) -> dict[str, Any] | None:
        """``{"path", "length", "hashes", "custom"}`` of a published target, or None."""
        try:
            validate_target_path(path)
        except InvalidTargetPathError:
            return None
        target = self._chain.load_chain().targets.signed.targets.get(path)
        if target is None:
            return None
        return {
            "path": target.path,
            "length": target.length,
            "hashes": dict(target.hashes),
            "custom": copy.deepcopy(target.unrecognized_fields.get("custom", {})),
        }

    def target_paths(self) -> set[str]:
        """The paths currently listed in targets metadata."""
        return set(self._chain.load_chain().targets.signed.targets)

    def manifest_public_keys(self) -> dict[str, Any]:
        """The ``x-modeldrop-manifest`` field of the newest root (keyids, threshold, keys)."""
        loaded = self._chain.load_root()
        if loaded is None:
            raise NotBootstrappedError("the TUF repository is not bootstrapped")
        return copy.deepcopy(loaded[0].signed.unrecognized_fields[MANIFEST_EXTENSION])

    def sign_manifest(self, document: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of ``document`` with ``signatures`` by the active manifest key.

        Raises:
            InvalidManifestError: the document is not canonical JSON (e.g. has floats).
            MissingSigningKeyError: the manifest key is not on this server.
        """
        return sign_document(document, [self._keys.signer("manifest")])

    # -- writing -----------------------------------------------------------------------

    def bootstrap(self) -> bool:
        """Create root, targets, snapshot and timestamp v1 unless they exist.

        Idempotent, and finishes a bootstrap that crashed half-way. Returns True if it
        published anything.
        """
        with self._lock():
            now = self._clock()
            loaded = self._chain.load_root()
            if loaded is None:
                self._keys.ensure()
                root = Root(consistent_snapshot=True)
                for role in _TUF_ROLES:
                    root.add_key(self._keys.public_key(role), role)
                root.unrecognized_fields[MANIFEST_EXTENSION] = manifest_extension(
                    [self._keys.public_key("manifest")]
                )
                root_md = self._chain.publish_root(None, root, now)
                logger.info("published root v1")
            else:
                root_md = loaded[0]
            if self._store.get("timestamp.json") is not None:
                return loaded is None
            self._chain.new_chain(root_md, now)
            logger.info("published empty targets, snapshot and timestamp v1")
            return True

    def add_targets(self, targets: Iterable[TargetSpec]) -> int:
        """Add or replace targets and publish targets -> snapshot -> timestamp.

        The artifact bytes must already be stored: once this returns, clients may fetch
        them. Re-adding identical targets publishes nothing.

        Returns:
            The targets metadata version that now lists them.

        Raises:
            InvalidTargetPathError, InvalidTargetError: nothing is published.
        """
        specs = [spec.validated() for spec in targets]
        with self._lock():
            chain = self._begin_write()
            listed = chain.targets.signed.targets
            changed = False
            for spec in specs:
                new = TargetFile(spec.length, {"sha256": spec.sha256}, spec.path, {"custom": spec.custom})
                if listed.get(spec.path) != new:
                    listed[spec.path] = new
                    changed = True
            if changed:
                self._publish_from_targets(chain, self._clock())
                logger.info("published %d target(s) in targets v%d", len(specs), chain.targets.signed.version)
            return chain.targets.signed.version

    def remove_targets(self, paths: Iterable[str], *, missing_ok: bool = False) -> int:
        """Remove targets and publish. Returns the targets version.

        Raises:
            TargetNotFoundError: a path is not listed (unless ``missing_ok``); nothing changes.
        """
        paths = [validate_target_path(p) for p in paths]
        with self._lock():
            chain = self._begin_write()
            listed = chain.targets.signed.targets
            missing = [p for p in paths if p not in listed]
            if missing and not missing_ok:
                raise TargetNotFoundError(f"not a published target: {missing[0]!r}")
            present = [p for p in paths if p in listed]
            for path in present:
                del listed[path]
            if present:
                self._publish_from_targets(chain, self._clock())
                logger.info("removed %d target(s) in targets v%d", len(present), chain.targets.signed.version)
            return chain.targets.signed.version

    def refresh(self, now: datetime | None = None, *, force: bool = False) -> list[str]:
        """Re-sign metadata that will expire within the policy's margin.

        Meant for a periodic job; ``now`` defaults to the clock (naive means UTC). Timestamp
        and snapshot are re-signed when due (or always with ``force``); targets and root only
        when due and their keys are on this server — if they are kept offline, a warning is
        logged instead.

        Returns:
            The roles re-signed, in publication order (e.g. ``["snapshot", "timestamp"]``).
        """
        with self._lock():
            chain = self._begin_write()
            now = as_utc(now or self._clock())
            due = {
                role: self._expiry.needs_refresh(role, getattr(chain, role).signed.expires, now)
                for role in _TUF_ROLES
            }
            done: list[str] = []
            if due["root"] and self._can_sign("root", chain.root.signed):
                root = Root.from_dict(copy.deepcopy(chain.root.signed.to_dict()))
                chain.root = self._chain.publish_root(chain.root, root, now)
                done.append("root")
            if due["targets"] and self._can_sign("targets", chain.root.signed):
                self._chain.publish_targets(chain, now)
                done.append("targets")
            if force or due["snapshot"] or "targets" in done:
                self._chain.publish_snapshot(chain, now)
                done.append("snapshot")
            if force or due["timestamp"] or "snapshot" in done:
                self._chain.publish_timestamp(chain, now)
                done.append("timestamp")
            if done:
                logger.info("refreshed %s", ", ".join(done))
            return done

    def rotate_key(self, role: str, record: Callable[[str], None] | None = None) -> str:
        """Replace ``role``'s key with a new one and publish a root that says so.

        The new root is signed by the root key(s) (old and new when rotating root), so
        clients holding any older root follow it. For timestamp/snapshot/targets the
        role's metadata is first re-published signed by both old and new keys — valid
        under the old root and the new one — and only then the new root; the old key is
        then retired. Retrying after a crash reuses the same pending key.

        ``record(new_keyid)`` is called inside the metadata store's transaction after the
        new metadata is written: what it stores (the audit row) commits with the rotation or
        not at all, and the new key becomes the active one only after that commit.

        Returns:
            The new key id.

        Raises:
            UnknownRoleError: not one of ``root, targets, snapshot, timestamp, manifest``.
            MissingSigningKeyError: the root key is not on this server. (A lost
                targets/snapshot/timestamp key can be replaced: root alone vouches for it.)
        """
        if role not in ROTATABLE_ROLES:
            raise UnknownRoleError(f"cannot rotate role {role!r}; expected one of {', '.join(ROTATABLE_ROLES)}")
        with self._lock():
            chain = self._begin_write()
            now = self._clock()
            # Fail before touching anything if the root key is offline.
            self._chain.signers("root", chain.root.signed)
            new_key = self._keys.add_key(role)
            new_signer = self._keys.signer_for_keyid(new_key.keyid)
            root = Root.from_dict(copy.deepcopy(chain.root.signed.to_dict()))
            if role == "manifest":
                root.unrecognized_fields[MANIFEST_EXTENSION] = manifest_extension([new_key])
            else:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(new_key, role)
            chain_roles = _RESIGNED_ON_ROTATION.get(role, ())
            with self._chain.store.transaction():
                if not chain_roles:
                    published = self._chain.publish_root(chain.root, root, now)
                elif self._holds_keys(role, chain.root.signed):
                    # Re-sign under the old root, adding the new key's signature: clients that
                    # have not seen the new root yet and clients that have both accept these bytes.
                    self._republish(chain, chain_roles, now, extra={role: [new_signer]})
                    published = self._chain.publish_root(chain.root, root, now)
                else:
                    # The old key is lost: only the new root can vouch for the new key, so publish
                    # it first. A client that reads in between fails once and succeeds on retry.
                    logger.warning("old %s key unavailable: publishing the new root first", role)
                    published = self._chain.publish_root(chain.root, root, now)
                    chain.root = published
                    self._republish(chain, chain_roles, now, extra={})
                if record is not None:
                    record(new_key.keyid)
            self._keys.activate_pending(role)
            logger.info("rotated %s key to %s in root v%d", role, new_key.keyid, published.signed.version)
            return new_key.keyid

    # -- internals ---------------------------------------------------------------------

    def _begin_write(self) -> Chain:
        """Load the latest chain and finish any rotation a crash left half-done."""
        chain = self._chain.load_chain()
        root = chain.root.signed
        for role in KEY_ROLES:
            pending = self._keys.pending_key(role)
            if pending is None:
                continue
            if role == "manifest":
                trusted = root.unrecognized_fields.get(MANIFEST_EXTENSION, {}).get("keyids", [])
            else:
                trusted = root.roles[role].keyids
            if pending.keyid in trusted:
                logger.warning("finishing an interrupted %s key rotation", role)
                self._keys.activate_pending(role)
        # After an interrupted lost-key rotation the role's metadata may still carry only
        # the old key's signature: re-publish from the first role that no longer verifies.
        for role in ("targets", "snapshot", "timestamp"):
            try:
                chain.root.verify_delegate(role, getattr(chain, role))
            except UnsignedMetadataError:
                logger.warning("%s metadata does not verify under root v%d: re-signing", role, root.version)
                self._republish(chain, _RESIGNED_ON_ROTATION[role], self._clock(), extra={})
                break
        return chain

    def _publish_from_targets(self, chain: Chain, now: datetime) -> None:
        self._republish(chain, ("targets", "snapshot", "timestamp"), now, extra={})

    def _republish(
        self, chain: Chain, roles: Iterable[str], now: datetime, *, extra: dict[str, list[Signer]]
    ) -> None:
        publish = {
            "targets": self._chain.publish_targets,
            "snapshot": self._chain.publish_snapshot,
            "timestamp": self._chain.publish_timestamp,
        }
        for role in roles:
            publish[role](chain, now, extra=extra.get(role, ()))

    def _holds_keys(self, role: str, root: Root) -> bool:
        try:
            self._chain.signers(role, root)
            return True
        except MissingSigningKeyError:
            return False

    def _can_sign(self, role: str, root: Root) -> bool:
        """True if this server holds ``role``'s keys; else log that it is due offline."""
        if self._holds_keys(role, root):
            return True
        logger.warning("%s metadata is due for re-signing but its key is not on this server", role)
        return False
