"""The attack and fault suite of issue 6, against a real loopback origin and real TUF.

Every case starts from a device that has v1 installed, offers something hostile or
broken, and asserts three things: the explicit update raises the expected error *code*,
the app's path (``get_model``) still returns v1 without raising, and nothing of the
offer reached a slot (the bytes on disk for the active model still hash to v1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner

from client_sdk import ModelClient, UpdateState
from client_sdk.errors import ModelDropError
from tests.sdk_origin import (
    Fault,
    SdkOrigin,
    active_sha,
    fast_config,
    make_client,
    rfc3339,
    sha256_hex,
)

MODEL, CHANNEL = "digits", "production"


@dataclass
class Env:
    origin: SdkOrigin
    client: ModelClient
    root: Path
    v1: bytes
    v2: bytes
    big: bytes
    first_timestamp: bytes  # timestamp v1, older than anything the client has seen

    @property
    def sha1(self) -> str:
        return sha256_hex(self.v1)


@pytest.fixture
def env(origin, tmp_path, tflite_models):
    first_timestamp = origin.repo.get_metadata("timestamp.json")
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"], counter=5)
    client = make_client(origin, tmp_path)
    client.update(MODEL, CHANNEL)
    yield Env(origin, client, tmp_path, tflite_models["v1"], tflite_models["v2"],
              tflite_models["big"], first_timestamp)
    client.close()


def offer_v2(env: Env, data: bytes | None = None, **kwargs) -> str:
    data = env.v2 if data is None else data
    kwargs.setdefault("counter", 6)
    env.origin.release(MODEL, CHANNEL, 2, "tflite-fp32", data, **kwargs)
    return sha256_hex(data)


def slot_names(client: ModelClient) -> set[str]:
    slots = client.cache_dir / "models" / MODEL / "slots"
    return {p.name for p in slots.iterdir()} if slots.is_dir() else set()


def expect_rejected(env: Env, code: str, offered_sha: str | None = None) -> ModelDropError:
    """Explicit update fails with ``code``; the app path keeps v1; nothing was installed."""
    with pytest.raises(ModelDropError) as excinfo:
        env.client.update(MODEL, CHANNEL)
    assert excinfo.value.code == code, excinfo.value
    status = env.client.status(MODEL, CHANNEL)
    assert status.state is UpdateState.FAILED and status.error.code == code
    model = env.client.get_model(MODEL, CHANNEL)  # LATEST_MODEL: must not raise
    assert model.version == 1 and model.sha256 == env.sha1
    assert active_sha(env.client) == env.sha1
    if offered_sha is not None:
        assert offered_sha not in slot_names(env.client)
    return excinfo.value


def foreign_signed(document: dict, signer: CryptoSigner) -> dict:
    unsigned = {k: v for k, v in document.items() if k != "signatures"}
    sig = signer.sign(encode_canonical(unsigned).encode())
    return {**unsigned, "signatures": [{"keyid": sig.keyid, "sig": sig.signature}]}


def requests_after_last_manifest(origin: SdkOrigin) -> list[str]:
    paths = [r["path"] for r in origin.requests]
    last = max(i for i, p in enumerate(paths) if p == "/v1/manifest")
    return paths[last + 1:]


# -- the manifest (director) --------------------------------------------------------------

def test_manifest_signed_by_an_unknown_key(env):
    sha = offer_v2(env)
    env.origin.manifest_post = lambda doc: foreign_signed(doc, CryptoSigner.generate_ed25519())
    expect_rejected(env, "manifest_signature_invalid", sha)


def test_manifest_signed_by_a_tuf_role_key_is_not_a_manifest_key(env):
    sha = offer_v2(env)
    timestamp_signer = env.origin.keys.signer("timestamp")
    env.origin.manifest_post = lambda doc: foreign_signed(doc, timestamp_signer)
    expect_rejected(env, "manifest_signature_invalid", sha)


def test_manifest_altered_after_signing(env):
    # Point the signed v2 manifest at another *published* artifact: TUF alone would agree
    # with the altered manifest, so only the signature stands in the way.
    offer_v2(env)
    other = env.origin.publish(MODEL, 3, "tflite-fp32", env.big)
    big_sha = sha256_hex(env.big)

    def alter(doc):
        doc = json.loads(json.dumps(doc))
        doc["version"] = 3
        doc["artifact"].update(target=other, length=len(env.big), sha256=big_sha)
        return doc

    env.origin.manifest_post = alter
    expect_rejected(env, "manifest_signature_invalid", big_sha)
    assert not env.origin.requests_to(f"/v1/artifacts/{big_sha}")


def test_manifest_with_unsigned_extra_signature_entries_still_needs_a_valid_one(env):
    sha = offer_v2(env)
    env.origin.manifest_post = lambda doc: {**doc, "signatures": [
        {"keyid": s["keyid"], "sig": "00" * 64} for s in doc["signatures"]]}
    expect_rejected(env, "manifest_signature_invalid", sha)


def test_expired_manifest(env):
    sha = offer_v2(env)
    now = datetime.now(UTC)

    def expire(doc):
        return {**doc, "issued_at": rfc3339(now - timedelta(days=2)),
                "expires_at": rfc3339(now - timedelta(hours=1))}

    env.origin.manifest_transform = expire
    expect_rejected(env, "manifest_expired", sha)


def test_manifest_expired_within_clock_skew_is_accepted_and_beyond_it_is_not(env):
    now = datetime.now(UTC)
    sha = offer_v2(env)
    env.origin.manifest_transform = lambda doc: {
        **doc, "issued_at": rfc3339(now - timedelta(hours=1)),
        "expires_at": rfc3339(now - timedelta(seconds=90))}
    strict = make_client(env.origin, env.root, config=fast_config(clock_skew=timedelta(0)))
    with pytest.raises(ModelDropError) as excinfo:
        strict.update(MODEL, CHANNEL)
    assert excinfo.value.code == "manifest_expired"
    assert env.client.update(MODEL, CHANNEL).sha256 == sha  # default skew: 5 minutes


def test_manifest_for_another_install_id(env):
    sha = offer_v2(env)
    env.origin.manifest_transform = lambda doc: {**doc, "install_id": str(uuid.uuid4())}
    expect_rejected(env, "manifest_install_id_mismatch", sha)


def test_manifest_for_another_model_is_wrong_software(env):
    sha = offer_v2(env)
    env.origin.manifest_transform = lambda doc: {**doc, "model": "faces"}
    expect_rejected(env, "manifest_invalid", sha)


def test_release_counter_lower_than_seen(env):
    sha = offer_v2(env, counter=3)  # v1 came with counter 5
    expect_rejected(env, "release_counter_rollback", sha)


def test_replayed_old_manifest_is_refused_even_after_the_cache_is_cleared(env):
    old_manifest = env.origin.served_manifests[-1]  # v1, counter 5, for this install id
    sha2 = offer_v2(env)
    assert env.client.update(MODEL, CHANNEL).sha256 == sha2
    env.origin.manifest_raw = old_manifest
    with pytest.raises(ModelDropError) as excinfo:
        env.client.update(MODEL, CHANNEL)
    assert excinfo.value.code == "release_counter_rollback"
    assert active_sha(env.client) == sha2

    # The OS clears the cache: models and install id file gone, the state dir survives.
    install_id = env.client.install_id
    env.client.close()
    shutil.rmtree(env.client.cache_dir)
    fresh = make_client(env.origin, env.root)
    assert fresh.install_id == install_id
    with pytest.raises(ModelDropError) as excinfo:
        fresh.get_model(MODEL, CHANNEL)
    assert excinfo.value.code == "release_counter_rollback"
    assert fresh.get_local_model(MODEL, CHANNEL) is None


# -- the artifact bytes -----------------------------------------------------------------------

def test_artifact_with_right_length_but_wrong_hash(env):
    sha = offer_v2(env)
    env.origin.faults["artifact"] = Fault("corrupt")
    expect_rejected(env, "hash_mismatch", sha)
    assert not list((env.client.cache_dir / "staging").glob(f"{sha}.part"))


@pytest.mark.parametrize("omit_length", [False, True], ids=["announced", "unannounced"])
def test_artifact_longer_than_declared_stops_at_the_cap(env, omit_length):
    sha = offer_v2(env)
    env.origin.faults["artifact"] = Fault("extra", extra=32 << 20, omit_length=omit_length)
    started = time.monotonic()
    expect_rejected(env, "artifact_too_large", sha)
    assert time.monotonic() - started < 10  # did not swallow 32 MiB x retries
    for part in (env.client.cache_dir / "staging").glob("*"):
        assert part.stat().st_size <= len(env.v2)


def test_trickling_server_hits_the_overall_deadline(env):
    sha = offer_v2(env, env.big)
    env.origin.faults["artifact"] = Fault("trickle", chunk=1024, interval=0.05)
    slow = make_client(env.origin, env.root,
                       config=fast_config(download_deadline=timedelta(seconds=1.5)))
    started = time.monotonic()
    with pytest.raises(ModelDropError) as excinfo:
        slow.update(MODEL, CHANNEL)
    elapsed = time.monotonic() - started
    assert excinfo.value.code == "download_deadline_exceeded"
    assert elapsed < 5, elapsed  # per-read timeouts alone would take ~14 s here
    assert active_sha(slow) == env.sha1 and sha not in slot_names(slow)
    # what arrived is kept for a later resume, and it is a true prefix
    part = (slow.cache_dir / "staging" / f"{sha}.part").read_bytes()
    assert 0 < len(part) < len(env.big) and env.big.startswith(part)


@pytest.mark.parametrize("group", ["artifact", "manifest", "metadata"])
def test_stalled_server_hits_the_deadline_not_the_read_timeout(env, group):
    sha = offer_v2(env, env.big)
    if group == "artifact":
        env.origin.faults[group] = Fault("pause", after=1000, seconds=20)
        config = fast_config(read_timeout=30, download_deadline=timedelta(seconds=1.5))
        code = "download_deadline_exceeded"
    else:  # a stall before the body: manifest and TUF use the metadata deadline
        env.origin.faults[group] = Fault("trickle", chunk=1, interval=0.2)
        config = fast_config(read_timeout=30, metadata_deadline=timedelta(seconds=1.5))
        code = "download_deadline_exceeded"
    client = make_client(env.origin, env.root, config=config)
    started = time.monotonic()
    with pytest.raises(ModelDropError) as excinfo:
        client.update(MODEL, CHANNEL)
    assert excinfo.value.code == code, excinfo.value
    assert time.monotonic() - started < 5
    assert active_sha(client) == env.sha1 and sha not in slot_names(client)


# -- the TUF image repository -------------------------------------------------------------

def test_manifest_hash_differs_from_tuf_targets(env):
    offer_v2(env)
    forged = bytes([env.v2[0] ^ 1]) + env.v2[1:]
    env.origin.blobs[sha256_hex(forged)] = forged
    env.origin.manifest_transform = lambda doc: {
        **doc, "artifact": {**doc["artifact"], "sha256": sha256_hex(forged),
                            "urls": [f"{env.origin.base_url}/v1/artifacts/{sha256_hex(forged)}"]}}
    expect_rejected(env, "target_mismatch", sha256_hex(forged))
    assert not env.origin.requests_to("/v1/artifacts/")[1:]  # only v1's original download


def test_manifest_length_differs_from_tuf_targets(env):
    sha = offer_v2(env)
    env.origin.manifest_transform = lambda doc: {
        **doc, "artifact": {**doc["artifact"], "length": len(env.v2) + 10}}
    expect_rejected(env, "target_mismatch", sha)


def test_manifest_names_a_path_missing_from_tuf_targets(env):
    sha = sha256_hex(env.v2)
    env.origin.blobs[sha] = env.v2  # downloadable, but never published in TUF
    env.origin.release(MODEL, CHANNEL, 2, "tflite-fp32", env.v2, counter=6, publish=False,
                       target="digits/2/unpublished.tflite")
    expect_rejected(env, "target_not_in_tuf", sha)
    assert not env.origin.requests_to(f"/v1/artifacts/{sha}")


def test_tuf_timestamp_rollback(env):
    sha = offer_v2(env)
    env.origin.metadata_overrides["timestamp.json"] = env.first_timestamp
    expect_rejected(env, "tuf_rollback", sha)


def test_tuf_snapshot_rollback_via_a_new_timestamp_naming_an_old_snapshot(env):
    sha = offer_v2(env)
    ts = env.origin.current_metadata("timestamp")
    ts.signed.version += 1
    # the client trusts snapshot N-1 (from v1's cycle); name N-2, signed with the real key
    ts.signed.snapshot_meta.version -= 2
    ts.signed.snapshot_meta.hashes = None
    ts.signed.snapshot_meta.length = None
    env.origin.metadata_overrides["timestamp.json"] = env.origin.resign(ts, "timestamp")
    expect_rejected(env, "tuf_rollback", sha)


def test_tuf_old_snapshot_served_under_the_new_name(env):
    sha = offer_v2(env)
    version = env.origin.current_metadata("timestamp").signed.snapshot_meta.version
    old = env.origin.repo.get_metadata(f"{version - 1}.snapshot.json")
    env.origin.metadata_overrides[f"{version}.snapshot.json"] = old
    err = expect_rejected(env, "tuf_rollback", sha) if not _timestamp_pins_snapshot_hash(
        env) else expect_rejected(env, "tuf_verification_failed", sha)
    assert err.code.startswith("tuf_")


def _timestamp_pins_snapshot_hash(env: Env) -> bool:
    meta = env.origin.current_metadata("timestamp").signed.snapshot_meta
    return bool(meta.hashes) or meta.length is not None


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_tuf_metadata_expired(env, role):
    sha = offer_v2(env)
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    ts = env.origin.current_metadata("timestamp")
    if role == "snapshot":
        snap = env.origin.current_metadata("snapshot")
        snap.signed.version += 1
        snap.signed.expires = past
        snap_bytes = env.origin.resign(snap, "snapshot")
        env.origin.metadata_overrides[f"{snap.signed.version}.snapshot.json"] = snap_bytes
        ts.signed.snapshot_meta.version = snap.signed.version
        ts.signed.snapshot_meta.length = len(snap_bytes)
        ts.signed.snapshot_meta.hashes = {"sha256": hashlib.sha256(snap_bytes).hexdigest()}
    else:
        ts.signed.expires = past
    ts.signed.version += 1
    env.origin.metadata_overrides["timestamp.json"] = env.origin.resign(ts, "timestamp")
    expect_rejected(env, "tuf_metadata_expired", sha)


def test_tuf_endless_metadata(env):
    sha = offer_v2(env)
    env.origin.metadata_overrides["timestamp.json"] = b"{" + b" " * (64 << 10)
    expect_rejected(env, "tuf_verification_failed", sha)


def test_tuf_metadata_signed_by_the_wrong_key(env):
    sha = offer_v2(env)
    ts = env.origin.current_metadata("timestamp")
    ts.signed.version += 1
    env.origin.metadata_overrides["timestamp.json"] = env.origin.resign(
        ts, "timestamp", signer=env.origin.keys.signer("snapshot"))
    expect_rejected(env, "tuf_verification_failed", sha)


@pytest.mark.parametrize("path", [
    "../digits/2/tflite-fp32.tflite",
    "digits/2/../../../etc/passwd",
    "/digits/2/tflite-fp32.tflite",
    "digits\\2\\tflite-fp32.tflite",
    "digits/2/./tflite-fp32.tflite",
    "digits//tflite-fp32.tflite",
    "digits/2/%2e%2e/x.tflite",
    "faces/2/tflite-fp32.tflite",
])
@pytest.mark.parametrize("field", ["artifact", "delta"])
def test_unsafe_target_path_is_rejected_before_any_use(env, path, field):
    sha = offer_v2(env)

    def hostile(doc):
        doc = json.loads(json.dumps(doc))
        if field == "artifact":
            doc["artifact"]["target"] = path
        else:
            doc["delta"] = {"target": path, "url": None, "length": 10, "sha256": "0" * 64,
                            "base_sha256": env.sha1, "algorithm": "bsdiff4"}
        return doc

    env.origin.manifest_transform = hostile
    expect_rejected(env, "unsafe_target_path", sha)
    after = requests_after_last_manifest(env.origin)
    assert not [p for p in after if p.startswith(("/tuf/", "/v1/artifacts/"))], after


# -- crashes, broken models, broken servers -------------------------------------------------

@pytest.mark.parametrize("shape", ["half", "full_length", "too_long"])
def test_corrupted_staging_file_from_an_earlier_crash_is_never_installed(env, shape):
    sha = sha256_hex(env.big)
    staging = env.client.cache_dir / "staging"
    staging.mkdir(exist_ok=True)
    size = {"half": len(env.big) // 2, "full_length": len(env.big),
            "too_long": len(env.big) + 100}[shape]
    (staging / f"{sha}.part").write_bytes(b"\xa5" * size)
    (staging / f"{sha}.part.json").write_text(json.dumps(
        {"sha256": sha, "length": len(env.big), "etag": f'"{sha}"', "url": None}))
    offer_v2(env, env.big)
    model = env.client.update(MODEL, CHANNEL)
    assert model.sha256 == sha and active_sha(env.client) == sha
    artifact_gets = env.origin.requests_to("/v1/artifacts/")[1:]
    assert "Range" not in artifact_gets[-1]["headers"]  # the final copy came whole


def test_corrupted_staging_file_with_no_way_to_redownload_keeps_the_old_model(env):
    sha = sha256_hex(env.big)
    staging = env.client.cache_dir / "staging"
    staging.mkdir(exist_ok=True)
    (staging / f"{sha}.part").write_bytes(b"\xa5" * (len(env.big) // 2))
    (staging / f"{sha}.part.json").write_text(json.dumps(
        {"sha256": sha, "length": len(env.big), "etag": f'"{sha}"', "url": None}))
    offer_v2(env, env.big)
    # the resumed tail arrives, the hash fails, and the fresh download then breaks off
    env.origin.faults["artifact"] = Fault("reset", after=1000, skip=1)
    err = expect_rejected(env, "download_incomplete", sha)
    assert err.retryable
    part = (staging / f"{sha}.part").read_bytes()
    assert len(part) == 1000 and env.big.startswith(part)  # only verified-good bytes kept


def test_model_that_fails_to_load_falls_back_and_is_not_downloaded_again(env):
    broken = env.v1[: len(env.v1) // 2]  # truncated flatbuffer, validly signed
    sha = offer_v2(env, broken)
    expect_rejected(env, "model_load_failed", sha)
    kinds = [e["kind"] for e in env.client.pending_telemetry()]
    assert "install_failed" in kinds
    failed = [e for e in env.client.pending_telemetry() if e["kind"] == "install_failed"][-1]
    assert failed["version"] == 2 and failed["error"] == "model_load_failed"
    downloads = len(env.origin.requests_to(f"/v1/artifacts/{sha}"))
    expect_rejected(env, "model_load_failed", sha)
    assert len(env.origin.requests_to(f"/v1/artifacts/{sha}")) == downloads


_PROBLEM = json.dumps({"type": "https://modeldrop.dev/problems/internal_error",
                       "title": "Internal server error", "status": 500,
                       "detail": "boom", "code": "internal_error"}).encode()


@pytest.mark.parametrize("group,fault,code", [
    ("manifest", Fault("status", 500), "server_error"),
    ("manifest", Fault("status", 500, body=_PROBLEM, content_type="application/problem+json"),
     "internal_error"),
    ("manifest", Fault("status", 502, body=b"<html><body>Bad gateway</body></html>",
                       content_type="text/html"), "server_error"),
    ("manifest", Fault("html"), "unexpected_response"),
    ("metadata", Fault("status", 500), "server_error"),
    ("metadata", Fault("html"), "unexpected_response"),
    ("artifact", Fault("status", 500), "server_error"),
    ("artifact", Fault("html"), "unexpected_response"),
    ("artifact", Fault("reset", after=1000), "download_incomplete"),
], ids=["manifest-500", "manifest-problem", "manifest-html-502", "manifest-html-200",
        "tuf-500", "tuf-html-200", "artifact-500", "artifact-html-200", "artifact-reset"])
def test_server_faults_give_a_clear_error_and_keep_the_old_model(env, group, fault, code):
    sha = offer_v2(env)
    env.origin.faults[group] = fault
    err = expect_rejected(env, code, sha)
    assert err.retryable


def test_unreachable_server_keeps_the_old_model(env, tmp_path):
    offline = ModelClient("http://127.0.0.1:9", env.client.cache_dir,
                          trusted_root=env.origin.trusted_root(), device=env.client.device,
                          config=fast_config())
    with pytest.raises(ModelDropError) as excinfo:
        offline.update(MODEL, CHANNEL)
    assert excinfo.value.code == "network_error" and excinfo.value.retryable
    assert offline.get_model(MODEL, CHANNEL).sha256 == env.sha1


def test_reset_download_resumes_from_the_kept_partial(env):
    sha = offer_v2(env, env.big)
    env.origin.faults["artifact"] = Fault("reset", after=100_000)
    expect_rejected(env, "download_incomplete", sha)
    part = env.client.cache_dir / "staging" / f"{sha}.part"
    assert part.stat().st_size == 100_000
    del env.origin.faults["artifact"]
    assert env.client.update(MODEL, CHANNEL).sha256 == sha
    last = env.origin.requests_to(f"/v1/artifacts/{sha}")[-1]
    assert last["headers"]["Range"] == "bytes=100000-"
    assert last["headers"]["If-Range"] == f'"{sha}"'


def test_threshold_counts_distinct_keys_only():
    from client_sdk._manifest import (
        ManifestKeys,
        parse_manifest,
        parse_manifest_keys,
        verify_signatures,
    )
    from client_sdk.errors import ManifestSignatureError

    k1, k2 = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    field = {"keyids": [k1.public_key.keyid, k2.public_key.keyid], "threshold": 2,
             "keys": {k.public_key.keyid: k.public_key.to_dict() for k in (k1, k2)}}
    keys = parse_manifest_keys({"x-modeldrop-manifest": field})
    now = datetime.now(UTC)
    doc = {"schema": 1, "model": "digits", "channel": "production", "release_counter": 1,
           "version": 1, "variant": "v", "format": "tflite",
           "artifact": {"target": "digits/1/v.tflite", "length": 1, "sha256": "a" * 64,
                        "urls": []}, "install_id": "abcdefgh-1234", "issued_at": rfc3339(now),
           "expires_at": rfc3339(now + timedelta(days=1)), "delta": None}
    one = foreign_signed(doc, k1)
    both = {**one, "signatures": one["signatures"] + foreign_signed(doc, k2)["signatures"]}
    twice = {**one, "signatures": one["signatures"] * 2}
    verify_signatures(parse_manifest(json.dumps(both).encode(), model="digits",
                                     channel="production"), keys)
    for doc_ in (one, twice):
        with pytest.raises(ManifestSignatureError):
            verify_signatures(parse_manifest(json.dumps(doc_).encode(), model="digits",
                                             channel="production"), keys)
    # the same public key under a second key id does not count twice
    alias = "f" * 64
    dup = ManifestKeys(keys={**keys.keys, alias: type(keys.keys[k1.public_key.keyid]).from_dict(
        alias, k1.public_key.to_dict())}, threshold=2)
    twice_aliased = {**one, "signatures": one["signatures"] + [
        {"keyid": alias, "sig": one["signatures"][0]["sig"]}]}
    with pytest.raises(ManifestSignatureError):
        verify_signatures(parse_manifest(json.dumps(twice_aliased).encode(), model="digits",
                                         channel="production"), dup)


def test_duplicate_keys_in_the_manifest_json_are_refused():
    from client_sdk._manifest import parse_manifest
    from client_sdk.errors import ManifestInvalidError

    with pytest.raises(ManifestInvalidError):
        parse_manifest(b'{"schema": 1, "model": "digits", "model": "x"}', model="digits",
                       channel="production")


