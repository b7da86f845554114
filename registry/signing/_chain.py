"""Reading and writing the chain root -> timestamp -> snapshot -> targets in the store.

Kept apart from :mod:`._repository` so the public class reads as the list of operations
and this module holds the two invariants every operation relies on:

* **Read fresh, follow the pointers.** The latest state is found from the store alone —
  ``root.json`` plus any newer ``N.root.json``, then ``timestamp.json`` -> the snapshot
  version it names -> the targets version that names — never from memory, because other
  processes publish into the same store.
* **Write in dependency order.** targets, then snapshot, then timestamp; every file only
  names files already written, so a crash at any point leaves the published chain whole.
  An interrupted write leaves at most an unreferenced ``N.<role>.json`` that the next
  operation overwrites before anything names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from ._keys import KeyStore
from ._policy import ExpiryPolicy
from ._store import MetadataStore
from .errors import MetadataInconsistentError, MissingSigningKeyError, NotBootstrappedError, SigningError

__all__ = ["Chain", "ChainWriter"]


@dataclass
class Chain:
    """The latest published metadata, parsed; mutated by the writer as it publishes."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]


def _sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


class ChainWriter:
    """Loads the chain from a :class:`MetadataStore` and publishes new versions into it."""

    def __init__(self, keys: KeyStore, store: MetadataStore, expiry: ExpiryPolicy):
        self.keys = keys
        self.store = store
        self.expiry = expiry

    # -- reading ----------------------------------------------------------------------

    def _parse(self, name: str, data: bytes | None) -> Metadata:
        if data is None:
            raise MetadataInconsistentError(f"{name} is referenced but missing from the store")
        try:
            return Metadata.from_bytes(data)
        except DeserializationError as e:
            raise MetadataInconsistentError(f"stored {name} does not parse as TUF metadata") from e

    def load_root(self) -> tuple[Metadata[Root], bytes] | None:
        """Return the newest root and its bytes, or None before bootstrap.

        ``root.json`` is only a hint: a crash may have written ``N+1.root.json`` without
        updating it, so probe forward until a version is missing.
        """
        data = self.store.get("root.json")
        if data is None:
            data = self.store.get("1.root.json")
            if data is None:
                return None
        root = self._parse("root.json", data)
        while (newer := self.store.get(f"{root.signed.version + 1}.root.json")) is not None:
            data, root = newer, self._parse(f"{root.signed.version + 1}.root.json", newer)
        return root, data

    def load_chain(self) -> Chain:
        """Return the latest published chain.

        Raises:
            NotBootstrappedError: no root, or bootstrap did not finish (no timestamp).
            MetadataInconsistentError: a referenced file is missing or unparsable.
        """
        loaded = self.load_root()
        ts_data = self.store.get("timestamp.json")
        if loaded is None or ts_data is None:
            raise NotBootstrappedError("the TUF repository is not bootstrapped")
        timestamp = self._parse("timestamp.json", ts_data)
        snap_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        snapshot = self._parse(snap_name, self.store.get(snap_name))
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise MetadataInconsistentError(f"{snap_name} does not list targets.json")
        targets_name = f"{targets_meta.version}.targets.json"
        targets = self._parse(targets_name, self.store.get(targets_name))
        return Chain(loaded[0], timestamp, snapshot, targets)

    # -- signing ----------------------------------------------------------------------

    def signers(self, role: str, root: Root) -> list[Signer]:
        """Signers on this server for the keys ``root`` assigns to ``role``.

        The root decides which keys count, not the key store: after an interrupted
        rotation the store's "active" file may lag behind what root already publishes.

        Raises:
            MissingSigningKeyError: fewer private keys here than the role's threshold.
        """
        role_info = root.roles[role]
        found = [s for kid in role_info.keyids if (s := self.keys.signer_for_keyid(kid)) is not None]
        if len(found) < role_info.threshold:
            raise MissingSigningKeyError(
                f"this server holds {len(found)} of the {role_info.threshold} {role} key(s) "
                f"root v{root.version} requires"
            )
        return found

    @staticmethod
    def _sign(md: Metadata, signers: list[Signer]) -> bytes:
        unique = {s.public_key.keyid: s for s in signers}
        md.signatures.clear()
        for signer in unique.values():
            md.sign(signer, append=True)
        return md.to_bytes()

    # -- publishing (call under the repository lock) -----------------------------------

    def publish_root(self, previous: Metadata[Root] | None, root: Root, now: datetime) -> Metadata[Root]:
        """Sign ``root`` as the next version and publish it as ``N.root.json``/``root.json``.

        Signed by the root keys of both ``previous`` and the new root, and checked the way
        a client will check it, so a root a client would refuse is never published.
        """
        root.version = previous.signed.version + 1 if previous else 1
        root.expires = self.expiry.expires("root", now)
        md = Metadata(root)
        signers = self.signers("root", root)
        if previous is not None:
            signers = self.signers("root", previous.signed) + signers
        data = self._sign(md, signers)
        try:
            if previous is not None:
                previous.verify_delegate("root", md)
            md.verify_delegate("root", md)
        except UnsignedMetadataError as e:
            raise SigningError(f"refusing to publish root v{root.version}: it would not verify") from e
        self.store.put(f"{root.version}.root.json", data)
        self.store.put("root.json", data)
        return md

    def publish_targets(self, chain: Chain, now: datetime, *, extra: Sequence[Signer] = (), bump: bool = True) -> None:
        targets = chain.targets.signed
        if bump:
            targets.version += 1
        targets.expires = self.expiry.expires("targets", now)
        data = self._sign(chain.targets, self.signers("targets", chain.root.signed) + list(extra))
        self.store.put(f"{targets.version}.targets.json", data)
        chain.snapshot.signed.meta["targets.json"] = MetaFile(targets.version, len(data), _sha256(data))

    def publish_snapshot(self, chain: Chain, now: datetime, *, extra: Sequence[Signer] = (), bump: bool = True) -> None:
        snapshot = chain.snapshot.signed
        if bump:
            snapshot.version += 1
        snapshot.expires = self.expiry.expires("snapshot", now)
        data = self._sign(chain.snapshot, self.signers("snapshot", chain.root.signed) + list(extra))
        self.store.put(f"{snapshot.version}.snapshot.json", data)
        chain.timestamp.signed.snapshot_meta = MetaFile(snapshot.version, len(data), _sha256(data))

    def publish_timestamp(self, chain: Chain, now: datetime, *, extra: Sequence[Signer] = (),
                          bump: bool = True) -> None:
        timestamp = chain.timestamp.signed
        if bump:
            timestamp.version += 1
        timestamp.expires = self.expiry.expires("timestamp", now)
        data = self._sign(chain.timestamp, self.signers("timestamp", chain.root.signed) + list(extra))
        self.store.put("timestamp.json", data)

    def new_chain(self, root: Metadata[Root], now: datetime) -> Chain:
        """Empty version-1 targets/snapshot/timestamp, published in order, for bootstrap."""
        chain = Chain(root, Metadata(Timestamp()), Metadata(Snapshot()), Metadata(Targets()))
        self.publish_targets(chain, now, bump=False)
        self.publish_snapshot(chain, now, bump=False)
        self.publish_timestamp(chain, now, bump=False)
        return chain
