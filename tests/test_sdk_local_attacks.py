"""A hostile mirror against the SDK in ``resolve="local"`` mode (docs/security.md, "Rulesets").

Whoever runs the mirror or CDN controls every byte a local-mode device reads. These tests
serve a real exported mirror (``modeldrop mirror export``) through a static server that can
replace, replay or stretch any file, and check the TUF attack list against the device:
rollback (older metadata, an older ruleset), freeze (metadata or a ruleset left to expire),
mix-and-match (another channel's ruleset, another version's artifact, metadata versions
mixed) and endless data. In every case the update is refused with a stable code and the
installed model stays active.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from client_sdk import DeviceInfo, ModelClient
from client_sdk.errors import ModelDropError
from registry.cli._mirror import DirSink, mirror_walk
from tests.helpers import base_settings
from tests.live import serve_app
from tests.makers import make_ready_version
from tests.sdk_origin import fast_config

MODEL, CHANNEL = "digits", "production"
DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")
Override = Callable[[SimpleHTTPRequestHandler], None]


class HostileMirror:
    """A static server over a mirror directory; ``overrides[path]`` answers that path."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.overrides: dict[str, Override] = {}
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(mirror.directory), **kwargs)

            def do_GET(self):
                override = mirror.overrides.get(self.path.split("?")[0])
                if override is not None:
                    override(self)
                else:
                    super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def body(data: bytes, ctype: str = "application/json") -> Override:
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def endless(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()  # no length: the body never ends
    try:
        while True:
            handler.wfile.write(b" " * 65536)
    except OSError:
        pass


class World:
    """The server, a device that installed v1 from the mirror, and a mirror at v2."""

    def __init__(self, app, tmp_path: Path, models: dict[str, bytes], **config) -> None:
        self.app, self.tmp = app, tmp_path
        services = app.extensions["modeldrop"]
        for data in (models["v1"], models["v2"]):
            make_ready_version(services, MODEL,
                               variants={"tflite-fp32": {"format": "tflite", "data": data}})
        self.v1_dir, self.v2_dir = tmp_path / "mirror-v1", tmp_path / "mirror-v2"
        with serve_app(app) as api:
            self.api = api
            self.promote(1)
            self.promote(1, channel="beta")
            self.root = requests.get(f"{api}/tuf/metadata/1.root.json", timeout=10).content
            mirror_walk(api, DirSink(self.v1_dir))
            self.promote(2)
            mirror_walk(api, DirSink(self.v2_dir))
        self.mirror = HostileMirror(self.v1_dir)
        self.client = ModelClient(self.mirror.base, tmp_path / "cache", trusted_root=self.root,
                                  device=DEVICE, config=fast_config(**config), resolve="local",
                                  telemetry_url=self.mirror.base + "/nowhere")
        assert self.client.get_model(MODEL, CHANNEL).version == 1
        self.mirror.directory = self.v2_dir

    def promote(self, version: int, channel: str = CHANNEL) -> None:
        token = (Path(self.app.extensions["modeldrop"].settings.data_dir)
                 / "admin-token").read_text().strip()
        resp = requests.post(f"{self.api}/v1/models/{MODEL}/releases", timeout=10,
                             json={"version": version, "channel": channel},
                             headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 201, resp.text

    def refused(self, code: str) -> ModelDropError:
        with pytest.raises(ModelDropError) as caught:
            self.client.check_for_update(MODEL, CHANNEL)
        assert caught.value.code == code, caught.value
        model = self.client.get_model(MODEL, CHANNEL)  # the app keeps running v1
        assert model.version == 1
        return caught.value

    def file(self, path: str) -> bytes:
        return (self.mirror.directory / path).read_bytes()


@pytest.fixture
def world(app, tmp_path, tflite_models) -> Iterator[World]:
    w = World(app, tmp_path, tflite_models)
    yield w
    w.client.close()
    w.mirror.close()


def test_honest_mirror_updates(world):
    assert world.client.get_model(MODEL, CHANNEL).version == 2


def test_rollback_to_older_metadata_is_refused(world):
    assert world.client.get_model(MODEL, CHANNEL).version == 2  # device now trusts v2 state
    world.mirror.directory = world.v1_dir  # the mirror replays its old copy
    with pytest.raises(ModelDropError) as caught:
        world.client.check_for_update(MODEL, CHANNEL)
    assert caught.value.code == "tuf_rollback"
    assert world.client.get_model(MODEL, CHANNEL).version == 2


def test_replayed_older_ruleset_is_refused(world):
    old = (world.v1_dir / f"v1/rulesets/{MODEL}/{CHANNEL}").read_bytes()
    sha = hashlib.sha256(old).hexdigest()
    new_sha = hashlib.sha256(world.file(f"v1/rulesets/{MODEL}/{CHANNEL}")).hexdigest()
    assert sha != new_sha
    world.mirror.overrides = {
        f"/v1/rulesets/{MODEL}/{CHANNEL}": body(old),
        f"/tuf/targets/rulesets/{MODEL}/{new_sha}.{CHANNEL}.json": body(old)}
    world.refused("hash_mismatch")


def test_another_channels_ruleset_is_refused(world):
    beta = world.file(f"v1/rulesets/{MODEL}/beta")
    sha = hashlib.sha256(world.file(f"v1/rulesets/{MODEL}/{CHANNEL}")).hexdigest()
    world.mirror.overrides = {
        f"/v1/rulesets/{MODEL}/{CHANNEL}": body(beta),
        f"/tuf/targets/rulesets/{MODEL}/{sha}.{CHANNEL}.json": body(beta)}
    world.refused("hash_mismatch")


@pytest.mark.parametrize("swap", ["other-version", "same-length-tampered"])
def test_another_artifact_is_refused(world, tflite_models, swap):
    v2 = tflite_models["v2"]
    v2_sha = hashlib.sha256(v2).hexdigest()
    data = tflite_models["v1"] if swap == "other-version" else v2[:-1] + bytes([v2[-1] ^ 1])
    served = body(data, "application/octet-stream")
    world.mirror.overrides = {f"/tuf/targets/{MODEL}/2/{v2_sha}.tflite-fp32.tflite": served,
                              f"/v1/artifacts/{v2_sha}": served}
    with pytest.raises(ModelDropError) as caught:
        world.client.update(MODEL, CHANNEL)
    # a length other than the signed one is refused from the headers, before any byte
    assert caught.value.code == ("unexpected_response" if swap == "other-version"
                                 else "hash_mismatch")
    assert world.client.get_model(MODEL, CHANNEL).version == 1


def test_mixed_metadata_versions_are_refused(world):
    # new timestamp, but the snapshot it names replaced by the old one (renamed)
    snap = sorted((world.v2_dir / "tuf/metadata").glob("*.snapshot.json"))[-1]
    old = sorted((world.v1_dir / "tuf/metadata").glob("*.snapshot.json"))[-1]
    world.mirror.overrides = {f"/tuf/metadata/{snap.name}": body(old.read_bytes())}
    world.refused("tuf_verification_failed")


def test_endless_ruleset_is_cut_at_the_signed_length(world):
    sha = hashlib.sha256(world.file(f"v1/rulesets/{MODEL}/{CHANNEL}")).hexdigest()
    world.mirror.overrides = {
        f"/v1/rulesets/{MODEL}/{CHANNEL}": endless,
        f"/tuf/targets/rulesets/{MODEL}/{sha}.{CHANNEL}.json": endless}
    started = time.monotonic()
    world.refused("artifact_too_large")
    assert time.monotonic() - started < 10


def test_endless_metadata_is_cut(world):
    world.mirror.overrides = {"/tuf/metadata/timestamp.json": endless}
    world.refused("tuf_verification_failed")


def test_a_stable_path_ahead_of_the_metadata_falls_back_to_the_signed_bytes(world):
    """Not an attack: a mirror mid-sync (new ruleset at the stable path, old metadata)."""
    world.mirror.directory = world.v1_dir
    shutil.copy(world.v2_dir / f"v1/rulesets/{MODEL}/{CHANNEL}",
                world.v1_dir / f"v1/rulesets/{MODEL}/{CHANNEL}")
    info = world.client.check_for_update(MODEL, CHANNEL)
    assert not info.update_available and info.installed.version == 1


def _frozen_world(tmp_path, tflite_models, **settings) -> World:
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, **settings))
    return World(app, tmp_path, tflite_models, clock_skew=timedelta(0))


def test_freeze_expired_timestamp_is_refused(tmp_path, tflite_models):
    w = _frozen_world(tmp_path, tflite_models, timestamp_expiry=8)
    try:
        time.sleep(8.5)  # the mirror stops being updated; its timestamp expires
        w.refused("tuf_metadata_expired")
    finally:
        w.client.close()
        w.mirror.close()


def test_freeze_expired_ruleset_is_refused(tmp_path, tflite_models):
    w = _frozen_world(tmp_path, tflite_models, ruleset_ttl=8)
    try:
        time.sleep(8.5)  # TUF metadata still valid for a day; the ruleset is not
        w.refused("ruleset_expired")
    finally:
        w.client.close()
        w.mirror.close()
