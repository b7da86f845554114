"""The TUF image repository and manifest signing, checked by a real python-tuf client.

Every client-side assertion goes through ``tuf.ngclient.Updater`` talking HTTP to a
loopback server (tests/tuf_server.py), so "verifies" means what a device would verify.
Attacks are simulated by serving other bytes than the repository published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata

from registry.signing import (
    MANIFEST_EXTENSION,
    DirMetadataStore,
    ExpiryPolicy,
    ImageRepository,
    InvalidManifestError,
    InvalidTargetError,
    InvalidTargetPathError,
    KeyStore,
    ManifestSignatureError,
    MissingSigningKeyError,
    TargetNotFoundError,
    TargetSpec,
    UnknownRoleError,
    consistent_target_name,
    verify_manifest,
)
from tests.tuf_server import TufServer, store_target_file

UTC = UTC


# -- helpers --------------------------------------------------------------------------


def make_custom(path: str) -> dict:
    model, version, name = path.split("/")
    return {"model": model, "version": int(version), "variant": name.split(".")[0],
            "format": "tflite", "kind": "variant"}


def make_repo(tmp_path: Path, **kwargs) -> ImageRepository:
    repo = ImageRepository(KeyStore(tmp_path / "keys"), DirMetadataStore(tmp_path / "metadata"), **kwargs)
    repo.bootstrap()
    return repo


def publish(repo: ImageRepository, blobs: Path, path: str, data: bytes) -> TargetSpec:
    """Store the bytes first, then publish: the order the integrator must keep."""
    digest = store_target_file(blobs, path, data)
    spec = TargetSpec(path, len(data), digest, make_custom(path))
    repo.add_targets([spec])
    return spec


def client_root(client_dir: Path) -> bytes:
    """The root a returning client trusts (python-tuf keeps it as metadata/root.json)."""
    return (client_dir / "metadata" / "root.json").read_bytes()


def flip_expiry_digit(data: bytes) -> bytes:
    """Change one byte inside ``signed`` (the seconds digit of ``expires``); still valid JSON."""
    at = data.index(b'"expires":"') + len(b'"expires":"') + 18
    digit = data[at:at + 1]
    assert digit.isdigit()
    return data[:at] + (b"1" if digit == b"0" else b"0") + data[at + 1:]


def verify_with_cryptography(document: dict, extension: dict) -> None:
    """Verify a manifest the way a device would, without any ModelDrop or TUF code."""
    payload = encode_canonical({k: v for k, v in document.items() if k != "signatures"}).encode()
    assert document["signatures"], "no signatures"
    for entry in document["signatures"]:
        key = extension["keys"][entry["keyid"]]
        assert (key["keytype"], key["scheme"]) == ("ed25519", "ed25519")
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"]))
        public.verify(bytes.fromhex(entry["sig"]), payload)  # raises InvalidSignature


def sample_manifest(target: TargetSpec) -> dict:
    return {
        "schema": 1, "model": "digits", "channel": "production", "release_counter": 7,
        "version": 4, "variant": "tflite-fp16", "format": "tflite",
        "artifact": {"target": target.path, "length": target.length, "sha256": target.sha256,
                     "urls": [f"http://host/v1/artifacts/{target.sha256}"]},
        "experiment": None, "arm": None, "install_id": "0f4b5c1e-6a7d-4e8f-9a0b-1c2d3e4f5a6b",
        "issued_at": "2026-11-27T14:00:00Z", "expires_at": "2026-11-28T14:00:00Z", "delta": None,
    }


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def repo(tmp_path: Path) -> ImageRepository:
    return make_repo(tmp_path)


@pytest.fixture
def server(repo: ImageRepository, blobs: Path):
    with TufServer(repo.get_metadata, blobs) as srv:
        yield srv


# -- bootstrap and layout ---------------------------------------------------------------


def test_bootstrap_creates_v1_chain_once(tmp_path: Path):
    repo = ImageRepository(KeyStore(tmp_path / "keys"), DirMetadataStore(tmp_path / "metadata"))
    assert repo.bootstrap() is True
    first = {n: repo.get_metadata(n) for n in ("1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json")}
    assert all(first.values())
    assert repo.bootstrap() is False
    assert {n: repo.get_metadata(n) for n in first} == first

    root = Metadata.from_bytes(repo.trusted_root()).signed
    assert root.consistent_snapshot is True
    keyids = [root.roles[r].keyids for r in ("root", "targets", "snapshot", "timestamp")]
    assert all(len(k) == 1 for k in keyids) and len({k[0] for k in keyids}) == 4
    assert all(root.roles[r].threshold == 1 for r in root.roles)
    ext = root.unrecognized_fields[MANIFEST_EXTENSION]
    assert ext == repo.manifest_public_keys()
    (manifest_keyid,) = ext["keyids"]
    assert ext["threshold"] == 1 and manifest_keyid not in root.keys
    assert manifest_keyid == KeyStore(tmp_path / "keys").public_key("manifest").keyid


def test_bootstrap_finishes_after_a_crash_half_way(tmp_path: Path):
    keys, store = KeyStore(tmp_path / "keys"), DirMetadataStore(tmp_path / "metadata")
    ImageRepository(keys, store).bootstrap()
    (tmp_path / "metadata" / "timestamp.json").unlink()  # as if the process died before it
    assert ImageRepository(keys, store).bootstrap() is True
    assert store.get("timestamp.json") is not None


def test_get_metadata_serves_stored_bytes_and_refuses_other_names(repo: ImageRepository, tmp_path: Path):
    assert repo.get_metadata("1.root.json") == (tmp_path / "metadata" / "1.root.json").read_bytes()
    for name in ("../keys/root.pem", "root.pem", "2.root.json", "x.json", "", "01.root.json"):
        assert repo.get_metadata(name) is None


def test_key_files_are_private_and_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    repo = make_repo(tmp_path)
    repo.rotate_key("timestamp")
    repo.sign_manifest({"a": 1})
    keys_dir = tmp_path / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys_dir / "retired").stat().st_mode) == 0o700
    files = [p for p in keys_dir.rglob("*") if p.is_file()]
    assert {p.name for p in keys_dir.glob("*.pem")} == {f"{r}.pem" for r in
                                                        ("root", "targets", "snapshot", "timestamp", "manifest")}
    assert len(list((keys_dir / "retired").glob("timestamp.*.pem"))) == 1
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secrets = [p.read_bytes() for p in keys_dir.rglob("*.pem")]
    assert all(s.startswith(b"-----BEGIN PRIVATE KEY-----") for s in secrets)
    shown = caplog.text + repr(repo) + repr(KeyStore(keys_dir)) + repr(KeyStore(keys_dir).signer("root"))
    assert "PRIVATE KEY" not in shown
    for secret in secrets:
        body = b"".join(secret.splitlines()[1:-1]).decode()
        assert body not in shown


def test_keys_are_loaded_not_regenerated_and_offline_keys_stay_offline(tmp_path: Path):
    repo = make_repo(tmp_path)
    before = {r: KeyStore(tmp_path / "keys").public_key(r).keyid for r in ("root", "timestamp", "manifest")}
    assert {r: KeyStore(tmp_path / "keys").public_key(r).keyid for r in before} == before

    # Keep the root key offline: the server must not mint a new one.
    offline = tmp_path / "offline-root.pem"
    shutil.move(tmp_path / "keys" / "root.pem", offline)
    keys = KeyStore(tmp_path / "keys")
    with pytest.raises(MissingSigningKeyError) as err:
        keys.signer("root")
    assert err.value.code == "missing_signing_key"
    assert not (tmp_path / "keys" / "root.pem").exists()

    repo = ImageRepository(keys, DirMetadataStore(tmp_path / "metadata"))
    names_before = sorted(p.name for p in (tmp_path / "metadata").iterdir())
    with pytest.raises(MissingSigningKeyError):
        repo.rotate_key("timestamp")
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == names_before
    assert keys.pending_key("timestamp") is None

    repo.add_targets([TargetSpec("digits/1/a.tflite", 1, "0" * 64)])  # online roles still work
    # Far enough ahead that root and targets are due: targets is re-signed, root skipped.
    later = datetime.now(UTC) + timedelta(days=200)
    assert repo.refresh(now=later) == ["targets", "snapshot", "timestamp"]
    assert Metadata.from_bytes(repo.trusted_root()).signed.version == 1


def test_the_key_store_signer_gives_the_bytes_cryptosigner_gives(tmp_path: Path):
    """KeyStore's Ed25519 signer skips CryptoSigner's per-call argument copy; Ed25519 is
    deterministic, so its signatures are byte for byte CryptoSigner's."""
    signer = KeyStore(tmp_path / "keys").signer("manifest")
    pem = (tmp_path / "keys" / "manifest.pem").read_bytes()
    reference = CryptoSigner(load_pem_private_key(pem, password=None), signer.public_key)
    for payload in (b"", b'{"schema":1}', bytes(range(256)) * 40):
        ours, theirs = signer.sign(payload), reference.sign(payload)
        assert (ours.keyid, ours.signature) == (theirs.keyid, theirs.signature)
        signer.public_key.verify_signature(ours, payload)


# -- a real client downloads and verifies -------------------------------------------------


def test_client_downloads_verified_target_with_custom(repo, server, blobs, tmp_path):
    data = b"\x00tflite model bytes\xff" * 100
    spec = publish(repo, blobs, "digits/4/tflite-fp16.tflite", data)
    assert (blobs / consistent_target_name(spec.path, spec.sha256)).read_bytes() == data

    updater = server.updater(tmp_path / "client", repo.trusted_root())
    updater.refresh()
    info = updater.get_targetinfo(spec.path)
    assert info is not None
    assert info.length == len(data) and info.hashes == {"sha256": spec.sha256}
    assert info.custom == make_custom(spec.path)
    downloaded = Path(updater.download_target(info))
    assert downloaded.read_bytes() == data
    assert updater.get_targetinfo("digits/4/not-published.tflite") is None
    assert repo.target_info(spec.path) == {"path": spec.path, "length": len(data),
                                           "hashes": {"sha256": spec.sha256}, "custom": make_custom(spec.path)}


def test_identical_re_add_publishes_nothing_and_replace_bumps(repo, blobs):
    spec = publish(repo, blobs, "digits/1/source.keras", b"v1")
    version = Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.version
    assert repo.add_targets([spec]) == 2
    assert Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.version == version
    assert repo.add_targets([TargetSpec(spec.path, 3, "b" * 64, {"model": "digits"})]) == 3
    assert repo.target_info(spec.path)["hashes"] == {"sha256": "b" * 64}


def test_removed_target_disappears_for_clients(repo, server, blobs, tmp_path):
    keep = publish(repo, blobs, "digits/1/keep.tflite", b"keep")
    gone = publish(repo, blobs, "digits/1/gone.tflite", b"gone")
    repo.remove_targets([gone.path])
    with pytest.raises(TargetNotFoundError) as err:
        repo.remove_targets([keep.path, gone.path])
    assert err.value.code == "target_not_found"
    assert repo.target_info(keep.path) is not None  # nothing changed on error
    repo.remove_targets([gone.path], missing_ok=True)
    updater = server.updater(tmp_path / "client", repo.trusted_root())
    assert updater.get_targetinfo(gone.path) is None
    assert updater.get_targetinfo(keep.path) is not None


@pytest.mark.parametrize("path", [
    "../etc/passwd", "digits/../x.tflite", "/abs/x.tflite", "digits\\4\\x.tflite",
    "digits//x.tflite", "digits/4/", "", "./x.tflite", "digits/\n/x.tflite",
])
def test_bad_target_paths_are_refused_and_change_nothing(repo, path):
    before = repo.get_metadata("timestamp.json")
    with pytest.raises(InvalidTargetPathError) as err:
        repo.add_targets([TargetSpec("digits/1/ok.tflite", 1, "a" * 64), TargetSpec(path, 1, "a" * 64)])
    assert err.value.code == "invalid_target_path" and err.value.status == 400
    assert repo.get_metadata("timestamp.json") == before
    assert repo.target_info("digits/1/ok.tflite") is None


@pytest.mark.parametrize("spec", [
    TargetSpec("d/1/x.tflite", -1, "a" * 64),
    TargetSpec("d/1/x.tflite", True, "a" * 64),
    TargetSpec("d/1/x.tflite", 1, "a" * 63),
    TargetSpec("d/1/x.tflite", 1, "g" * 64),
    TargetSpec("d/1/x.tflite", 1, "a" * 64, {"accuracy": 0.98}),  # floats are not canonical JSON
])
def test_bad_target_fields_are_refused(repo, spec):
    with pytest.raises(InvalidTargetError) as err:
        repo.add_targets([spec])
    assert err.value.code == "invalid_target"


# -- attacks the client must reject ----------------------------------------------------------


def test_client_rejects_changed_target_bytes(repo, server, blobs, tmp_path):
    data = b"original model bytes"
    spec = publish(repo, blobs, "digits/4/int8.tflite", data)
    stored = blobs / consistent_target_name(spec.path, spec.sha256)
    stored.write_bytes(b"malicious model byte")  # same length, other bytes
    assert len(stored.read_bytes()) == len(data)

    updater = server.updater(tmp_path / "client", repo.trusted_root())
    info = updater.get_targetinfo(spec.path)
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info)
    assert updater.find_cached_target(info) is None


def test_client_rejects_tampered_timestamp_and_snapshot(repo, server, blobs, tmp_path):
    publish(repo, blobs, "digits/1/a.tflite", b"a")
    timestamp = repo.get_metadata("timestamp.json")
    snapshot_name = f"{Metadata.from_bytes(timestamp).signed.snapshot_meta.version}.snapshot.json"

    server.overrides["timestamp.json"] = flip_expiry_digit(timestamp)
    with pytest.raises(UnsignedMetadataError):
        server.updater(tmp_path / "c1", repo.trusted_root()).refresh()

    sig_tampered = json.loads(timestamp)
    sig = sig_tampered["signatures"][0]["sig"]
    sig_tampered["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    server.overrides["timestamp.json"] = json.dumps(sig_tampered).encode()
    with pytest.raises(UnsignedMetadataError):
        server.updater(tmp_path / "c2", repo.trusted_root()).refresh()

    # The timestamp pins the snapshot's hash, so a changed snapshot fails before its signature.
    del server.overrides["timestamp.json"]
    server.overrides[snapshot_name] = flip_expiry_digit(repo.get_metadata(snapshot_name))
    with pytest.raises(LengthOrHashMismatchError):
        server.updater(tmp_path / "c3", repo.trusted_root()).refresh()

    del server.overrides[snapshot_name]
    server.updater(tmp_path / "c4", repo.trusted_root()).refresh()  # untampered: fine


def test_client_rejects_rollback_to_older_metadata(repo, server, blobs, tmp_path):
    client = tmp_path / "client"
    publish(repo, blobs, "digits/1/a.tflite", b"a")
    server.updater(client, repo.trusted_root()).refresh()
    old_timestamp = repo.get_metadata("timestamp.json")
    old_snapshot_version = Metadata.from_bytes(old_timestamp).signed.snapshot_meta.version
    old_snapshot = repo.get_metadata(f"{old_snapshot_version}.snapshot.json")

    publish(repo, blobs, "digits/2/b.tflite", b"b")
    server.updater(client, client_root(client)).refresh()  # the client has seen the newer state

    server.overrides["timestamp.json"] = old_timestamp
    with pytest.raises(BadVersionNumberError):
        server.updater(client, client_root(client)).refresh()
    # An attacker serving the old snapshot under the new name is caught by the hash pin.
    del server.overrides["timestamp.json"]
    publish(repo, blobs, "digits/3/c.tflite", b"c")
    new_version = Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.snapshot_meta.version
    server.overrides[f"{new_version}.snapshot.json"] = old_snapshot
    with pytest.raises(LengthOrHashMismatchError):
        server.updater(client, client_root(client)).refresh()


def test_client_rejects_endless_metadata(repo, server, tmp_path):
    server.overrides["timestamp.json"] = repo.get_metadata("timestamp.json") + b" " * 100_000
    with pytest.raises(DownloadLengthMismatchError):
        server.updater(tmp_path / "client", repo.trusted_root()).refresh()


def test_fast_forwarded_timestamp_is_recovered_by_rotating_its_key(repo, server, blobs, tmp_path):
    """An attacker who stole the timestamp key signs version 1000: clients accept it and then
    refuse the real, lower versions (a freeze). Rotating the key is the recovery: the cached
    fast-forwarded timestamp no longer verifies under the new root and is discarded."""
    client = tmp_path / "client"
    spec = publish(repo, blobs, "digits/1/a.tflite", b"a")
    stolen = CryptoSigner(load_pem_private_key((tmp_path / "keys" / "timestamp.pem").read_bytes(), None))
    forged = Metadata.from_bytes(repo.get_metadata("timestamp.json"))
    forged.signed.version = 1000
    forged.sign(stolen)
    server.overrides["timestamp.json"] = forged.to_bytes()
    server.updater(client, repo.trusted_root()).refresh()  # validly signed: accepted
    del server.overrides["timestamp.json"]
    with pytest.raises(BadVersionNumberError):
        server.updater(client, client_root(client)).refresh()

    repo.rotate_key("timestamp")
    updater = server.updater(client, client_root(client))
    updater.refresh()
    assert Path(updater.download_target(updater.get_targetinfo(spec.path))).read_bytes() == b"a"
    cached = Metadata.from_bytes((client / "metadata" / "timestamp.json").read_bytes())
    assert cached.signed.version < 1000


# -- expiry and refresh -----------------------------------------------------------------------


def test_refresh_resigns_only_what_is_due(repo):
    now = datetime.now(UTC)
    assert repo.refresh(now=now) == []
    assert repo.refresh(now=now + timedelta(hours=13)) == ["timestamp"]
    assert repo.refresh(now=now + timedelta(days=4)) == ["snapshot", "timestamp"]
    assert repo.refresh(now=now + timedelta(days=4), force=True) == ["snapshot", "timestamp"]
    assert repo.refresh(now=now + timedelta(days=4)) == []
    expires = Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.expires
    assert expires == (now + timedelta(days=5)).replace(microsecond=0)


def test_unrefreshed_timestamp_expires_for_clients_until_refreshed(tmp_path, blobs):
    """The repository last signed 30 hours ago and nobody refreshed: the device's own
    clock (the real one, unpatched) must see the 1-day timestamp as expired."""
    signed_at = datetime.now(UTC) - timedelta(hours=30)
    repo = make_repo(tmp_path, clock=lambda: signed_at)
    spec = publish(repo, blobs, "digits/1/a.tflite", b"model")
    with TufServer(repo.get_metadata, blobs) as server:
        with pytest.raises(ExpiredMetadataError):
            server.updater(tmp_path / "client", repo.trusted_root()).refresh()
        assert repo.refresh(now=datetime.now(UTC)) == ["timestamp"]
        updater = server.updater(tmp_path / "client", repo.trusted_root())
        updater.refresh()
        assert Path(updater.download_target(updater.get_targetinfo(spec.path))).read_bytes() == b"model"


def test_short_lived_timestamp_expires_on_the_real_clock(tmp_path, blobs):
    """Same rule with real time passing: a 2-second timestamp, a short sleep."""
    repo = make_repo(tmp_path, expiry=ExpiryPolicy(timestamp=2))
    with TufServer(repo.get_metadata, blobs) as server:
        client = tmp_path / "client"
        server.updater(client, repo.trusted_root()).refresh()
        expires = Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.expires
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
        with pytest.raises(ExpiredMetadataError):
            server.updater(client, client_root(client)).refresh()
        assert repo.refresh() == ["timestamp"]
        server.updater(client, client_root(client)).refresh()


# -- key rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [
    ["timestamp"], ["snapshot"], ["targets"], ["manifest"], ["root"],
    ["timestamp", "targets", "snapshot", "manifest", "root"],
])
def test_clients_holding_the_old_root_follow_a_rotation(repo, server, blobs, tmp_path, roles):
    first = publish(repo, blobs, "digits/1/a.tflite", b"first")
    old_root = repo.trusted_root()
    seen_before = tmp_path / "seen-before"  # a device that refreshed before the rotation
    server.updater(seen_before, old_root).refresh()
    old_ext = repo.manifest_public_keys()
    old_manifest = repo.sign_manifest(sample_manifest(first))

    new_keyids = {role: repo.rotate_key(role) for role in roles}
    second = publish(repo, blobs, "digits/2/b.tflite", b"second")  # signed with new keys only

    for client, bootstrap in ((tmp_path / "fresh", old_root), (seen_before, client_root(seen_before))):
        updater = server.updater(client, bootstrap)
        updater.refresh()
        for spec, data in ((first, b"first"), (second, b"second")):
            assert Path(updater.download_target(updater.get_targetinfo(spec.path))).read_bytes() == data
        trusted = Metadata.from_bytes(client_root(client)).signed
        assert trusted.version == 1 + len(roles)
        for role, keyid in new_keyids.items():
            if role == "manifest":
                assert trusted.unrecognized_fields[MANIFEST_EXTENSION]["keyids"] == [keyid]
            else:
                assert trusted.roles[role].keyids == [keyid]
        ext = trusted.unrecognized_fields[MANIFEST_EXTENSION]
        verify_with_cryptography(repo.sign_manifest(sample_manifest(second)), ext)
        if "manifest" in roles:
            with pytest.raises(KeyError):  # the old manifest key is no longer trusted
                verify_with_cryptography(old_manifest, ext)
        else:
            assert ext == old_ext

    keys = KeyStore(tmp_path / "keys")
    for role, keyid in new_keyids.items():
        assert keys.public_key(role).keyid == keyid
        assert keys.pending_key(role) is None
        assert len(keys.retired_keyids(role)) == 1
    # Metadata published after the rotation carries only the new key's signature.
    for role in set(roles) & {"targets", "snapshot", "timestamp"}:
        name = {"timestamp": "timestamp.json"}.get(role)
        if name is None:
            chain_ts = Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed
            snap = Metadata.from_bytes(repo.get_metadata(f"{chain_ts.snapshot_meta.version}.snapshot.json"))
            name = (f"{chain_ts.snapshot_meta.version}.snapshot.json" if role == "snapshot"
                    else f"{snap.signed.meta['targets.json'].version}.targets.json")
        assert set(Metadata.from_bytes(repo.get_metadata(name)).signatures) == {new_keyids[role]}


class _CrashOnceStore(DirMetadataStore):
    """A real directory store that dies once, right after a chosen file is written."""

    def __init__(self, directory: Path, crash_after: str | None):
        super().__init__(directory)
        self.crash_after: str | None = crash_after

    def put(self, name: str, data: bytes) -> None:
        super().put(name, data)
        if name == self.crash_after:
            self.crash_after = None
            raise OSError("simulated crash")


def test_rotation_interrupted_after_the_new_root_is_finished_by_the_next_write(tmp_path, blobs):
    keys = KeyStore(tmp_path / "keys")
    store = _CrashOnceStore(tmp_path / "metadata", crash_after="2.root.json")
    repo = ImageRepository(keys, store)
    repo.bootstrap()
    with TufServer(repo.get_metadata, blobs) as server:
        old_root = repo.trusted_root()
        with pytest.raises(OSError):
            repo.rotate_key("timestamp")
        pending = keys.pending_key("timestamp")
        assert pending is not None  # published in root v2, not yet activated
        server.updater(tmp_path / "c1", old_root).refresh()  # the published state is whole

        spec = publish(repo, blobs, "digits/1/a.tflite", b"after crash")
        assert keys.pending_key("timestamp") is None
        assert keys.public_key("timestamp").keyid == pending.keyid
        updater = server.updater(tmp_path / "c2", old_root)
        assert Path(updater.download_target(updater.get_targetinfo(spec.path))).read_bytes() == b"after crash"


def test_rotation_interrupted_before_the_new_root_is_retried_with_the_same_key(tmp_path, blobs):
    """The dual-signed timestamp is out, the root naming the new key is not: clients on
    the old root still verify it, and a retry publishes the same new key."""
    keys = KeyStore(tmp_path / "keys")
    store = _CrashOnceStore(tmp_path / "metadata", crash_after=None)
    repo = ImageRepository(keys, store)
    repo.bootstrap()  # writes timestamp.json too: arm the crash only afterwards
    store.crash_after = "timestamp.json"
    old_keyid = keys.public_key("timestamp").keyid
    with TufServer(repo.get_metadata, blobs) as server:
        client = tmp_path / "client"
        with pytest.raises(OSError):
            repo.rotate_key("timestamp")
        pending = keys.pending_key("timestamp")
        assert set(Metadata.from_bytes(repo.get_metadata("timestamp.json")).signatures) == {old_keyid, pending.keyid}
        assert Metadata.from_bytes(repo.trusted_root()).signed.version == 1
        server.updater(client, repo.trusted_root()).refresh()

        publish(repo, blobs, "digits/1/a.tflite", b"a")  # still signed by the old key
        assert keys.pending_key("timestamp") == pending
        server.updater(client, client_root(client)).refresh()

        assert repo.rotate_key("timestamp") == pending.keyid
        server.updater(client, client_root(client)).refresh()
        assert Metadata.from_bytes(client_root(client)).signed.roles["timestamp"].keyids == [pending.keyid]


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_a_lost_online_key_is_replaced_by_root_alone(repo, server, blobs, tmp_path, role):
    first = publish(repo, blobs, "digits/1/a.tflite", b"a")
    old_root = repo.trusted_root()
    (tmp_path / "keys" / f"{role}.pem").unlink()
    with pytest.raises(MissingSigningKeyError):
        publish(repo, blobs, "digits/2/b.tflite", b"b")

    new_keyid = repo.rotate_key(role)
    second = publish(repo, blobs, "digits/2/b.tflite", b"b")
    updater = server.updater(tmp_path / "client", old_root)
    for spec, data in ((first, b"a"), (second, b"b")):
        assert Path(updater.download_target(updater.get_targetinfo(spec.path))).read_bytes() == data
    assert Metadata.from_bytes(client_root(tmp_path / "client")).signed.roles[role].keyids == [new_keyid]


def test_lost_key_rotation_interrupted_is_healed_by_the_refresh_job(tmp_path, blobs):
    keys = KeyStore(tmp_path / "keys")
    store = _CrashOnceStore(tmp_path / "metadata", crash_after="2.root.json")
    repo = ImageRepository(keys, store)
    repo.bootstrap()
    (tmp_path / "keys" / "timestamp.pem").unlink()
    with TufServer(repo.get_metadata, blobs) as server:
        old_root = repo.trusted_root()
        with pytest.raises(OSError):
            repo.rotate_key("timestamp")
        # Root v2 names the new key, timestamp.json is still signed by the lost one.
        with pytest.raises(UnsignedMetadataError):
            server.updater(tmp_path / "c1", old_root).refresh()
        repo.refresh()
        server.updater(tmp_path / "c2", old_root).refresh()
        assert keys.pending_key("timestamp") is None


def test_rotate_unknown_role_is_refused(repo):
    with pytest.raises(UnknownRoleError) as err:
        repo.rotate_key("director")
    assert err.value.code == "unknown_role"


# -- manifests ------------------------------------------------------------------------------------


def test_signed_manifest_verifies_with_the_key_from_the_trusted_root(repo, server, blobs, tmp_path):
    spec = publish(repo, blobs, "digits/4/tflite-fp16.tflite", b"weights")
    document = sample_manifest(spec)
    signed = repo.sign_manifest(document)
    assert "signatures" not in document  # input untouched
    assert {k: v for k, v in signed.items() if k != "signatures"} == document

    client = tmp_path / "client"
    server.updater(client, repo.trusted_root()).refresh()
    ext = Metadata.from_bytes(client_root(client)).signed.unrecognized_fields[MANIFEST_EXTENSION]
    verify_with_cryptography(signed, ext)
    verify_manifest(signed, ext)
    (keyid,) = ext["keyids"]
    key = ext["keys"][keyid]
    assert hashlib.sha256(encode_canonical(key).encode()).hexdigest() == keyid  # TUF key id
    assert [s["keyid"] for s in signed["signatures"]] == [keyid]

    for field, value in (("release_counter", 8), ("install_id", "someone-else-0001"), ("variant", "x")):
        forged = {**signed, field: value}
        with pytest.raises(InvalidSignature):
            verify_with_cryptography(forged, ext)
        with pytest.raises(ManifestSignatureError):
            verify_manifest(forged, ext)
    forged = json.loads(json.dumps(signed))
    forged["artifact"]["sha256"] = "0" * 64
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(forged, ext)

    resigned = repo.sign_manifest(signed)  # old signatures are replaced, not accumulated
    assert len(resigned["signatures"]) == 1


def test_manifest_with_floats_is_refused(repo):
    with pytest.raises(InvalidManifestError) as err:
        repo.sign_manifest({"schema": 1, "latency_ms": 4.1})
    assert err.value.code == "invalid_manifest"


# -- concurrency ------------------------------------------------------------------------------------


def test_concurrent_add_targets_lose_nothing(repo, server, tmp_path):
    def worker(n: int) -> None:
        for i in range(5):
            repo.add_targets([TargetSpec(f"m{n}/{i}/v.tflite", i, hashlib.sha256(b"%d" % i).hexdigest())])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    updater = server.updater(tmp_path / "client", repo.trusted_root())
    updater.refresh()
    for n in range(8):
        for i in range(5):
            assert updater.get_targetinfo(f"m{n}/{i}/v.tflite") is not None
    assert Metadata.from_bytes(repo.get_metadata("timestamp.json")).signed.version == 41


def test_repositories_sharing_a_store_see_each_others_writes(tmp_path):
    """Two instances (as in two server processes) with a shared lock: no lost update."""
    shared = threading.Lock()
    repos = [ImageRepository(KeyStore(tmp_path / "keys"), DirMetadataStore(tmp_path / "metadata"),
                             lock=lambda: shared) for _ in range(2)]
    repos[0].bootstrap()

    def worker(k: int) -> None:
        for i in range(10):
            repos[k].add_targets([TargetSpec(f"p{k}/{i}/v.tflite", 1, "c" * 64)])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repos[1].rotate_key("snapshot")
    assert all(repos[0].target_info(f"p{k}/{i}/v.tflite") for k in range(2) for i in range(10))
