"""Downloads: resume across real process kills, Range/If-Range, progress, deltas.

The kill test runs the SDK in a child process and SIGKILLs it at 50 random points —
mostly while the origin holds the connection at a random byte offset, sometimes at a
random moment after start (TUF refresh, manifest, download) — then lets one run finish.
After every kill nothing may be installed and the partial must be a true prefix; at the
end the installed file must hash right and resuming must have saved the re-downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import bsdiff4
import pytest

from client_sdk import UpdateState
from client_sdk.errors import ModelDropError
from tests.sdk_origin import (
    Fault,
    active_sha,
    fast_config,
    make_client,
    sha256_hex,
)

MODEL, CHANNEL = "digits", "production"
REPO_ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys
from datetime import timedelta
from pathlib import Path
from client_sdk import ClientConfig, DeviceInfo, ModelClient
base, cache, root_file = sys.argv[1:4]
client = ModelClient(base, cache, trusted_root=Path(root_file).read_bytes(),
                     device=DeviceInfo("android", "14", "pixel7", "2.3.0"),
                     config=ClientConfig(download_deadline=timedelta(seconds=60),
                                         http_retries=0, chunk_bytes=4096,
                                         telemetry_batch_size=10_000))
model = client.update("digits", "production")
print(json.dumps({"sha256": model.sha256, "path": str(model.path)}))
"""


def _spawn(origin, cache: Path, root_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, origin.base_url, str(cache),
                             str(root_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=REPO_ROOT)


def _nothing_installed(cache: Path) -> bool:
    pointer = cache / "models" / MODEL / "channels" / f"{CHANNEL}.json"
    return not pointer.exists() or json.loads(pointer.read_text()).get("current") is None


@pytest.mark.timeout(180)
def test_process_killed_at_random_points_50_times_then_resumes(origin, tmp_path,
                                                               tflite_models):
    data = tflite_models["big"]
    sha, length = sha256_hex(data), len(data)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    root_file = tmp_path / "root.json"
    root_file.write_bytes(origin.trusted_root())
    cache = tmp_path / "cache"
    part = cache / "staging" / f"{sha}.part"
    seed = int(os.environ.get("SDK_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(1, length), 50))
    started = time.monotonic()
    paused_kills = timed_kills = 0

    for i, offset in enumerate(offsets):
        have = part.stat().st_size if part.exists() else 0
        if i % 8 == 7 and length - have > 10_000:
            # a kill at a random moment: start-up, TUF refresh, manifest or download (the
            # trickle is slow enough that the download cannot finish first)
            origin.faults["artifact"] = Fault("trickle", chunk=64, interval=0.05)
            proc = _spawn(origin, cache, root_file)
            time.sleep(rng.uniform(0.05, 0.6))
            timed_kills += 1
        else:
            stop_at = max(offset, have + 1)
            fault = Fault("pause", after=stop_at, seconds=10)
            origin.faults["artifact"] = fault
            proc = _spawn(origin, cache, root_file)
            if not fault.reached.wait(20):
                proc.kill()
                pytest.fail(f"seed {seed} run {i}: the child never reached byte {stop_at}"
                            f" (exit {proc.wait()}): {proc.stderr.read().decode()[-2000:]}")
            if i % 4:  # mostly: kill once the child has written up to the stop point
                wait_until = time.monotonic() + 2
                while time.monotonic() < wait_until and (
                        not part.exists() or part.stat().st_size < stop_at):
                    time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.005))
            paused_kills += 1
        proc.kill()
        assert proc.wait(10) == -9, (seed, i)
        if os.environ.get("SDK_KILL_DEBUG"):
            print(i, "pause" if i % 8 != 7 else "timed", offset, have,
                  part.stat().st_size if part.exists() else None, origin.artifact_bytes_sent)
        proc.stdout.close()
        proc.stderr.close()
        assert _nothing_installed(cache), (seed, i)
        if part.exists():
            assert data.startswith(part.read_bytes()), f"corrupt partial (seed {seed}, run {i})"

    origin.faults.clear()
    proc = _spawn(origin, cache, root_file)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["sha256"] == sha
    assert hashlib.sha256(Path(result["path"]).read_bytes()).hexdigest() == sha
    assert paused_kills + timed_kills == 50
    # resuming, not restarting: far less than 50 copies went over the wire
    assert origin.artifact_bytes_sent < 2 * length, (seed, origin.artifact_bytes_sent)
    assert time.monotonic() - started < 90


def test_progress_reports_real_intermediate_values(origin, tmp_path, tflite_models):
    data = tflite_models["big"]
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    client = make_client(origin, tmp_path, config=fast_config(chunk_bytes=16 << 10))
    seen: list[tuple[int, int]] = []
    states = []

    def on_progress(done: int, total: int) -> None:
        seen.append((done, total))
        states.append(client.status(MODEL, CHANNEL).state)

    client.get_model(MODEL, CHANNEL, on_progress=on_progress)
    dones = [d for d, _ in seen]
    assert {t for _, t in seen} == {len(data)}
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == len(data)
    assert len({d for d in dones if 0 < d < len(data)}) >= 10
    assert set(states) == {UpdateState.DOWNLOADING}
    assert client.status(MODEL, CHANNEL).state is UpdateState.INSTALLED


def test_download_size_is_known_before_downloading(origin, tmp_path, tflite_models):
    data = tflite_models["big"]
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    client = make_client(origin, tmp_path)
    info = client.check_for_update(MODEL, CHANNEL)
    assert info.update_available and info.download_bytes == len(data) == info.artifact_bytes
    assert info.version == 1 and not info.is_delta
    assert not origin.requests_to("/v1/artifacts/")  # nothing downloaded yet
    model = client.apply_update(info)
    assert model.sha256 == sha256_hex(data)


def test_server_ignoring_range_restarts_cleanly(origin, tmp_path, tflite_models):
    data = tflite_models["big"]
    sha = sha256_hex(data)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    client = make_client(origin, tmp_path)
    origin.faults["artifact"] = Fault("reset", after=50_000)
    with pytest.raises(ModelDropError) as excinfo:
        client.update(MODEL, CHANNEL)
    assert excinfo.value.code == "download_incomplete"
    origin.faults["artifact"] = Fault("no_range")
    model = client.update(MODEL, CHANNEL)
    assert model.sha256 == sha and active_sha(client) == sha
    last = origin.requests_to("/v1/artifacts/")[-1]
    assert last["headers"].get("Range", "").startswith("bytes=")


def test_changed_etag_makes_if_range_fetch_the_whole_file(origin, tmp_path, tflite_models):
    data = tflite_models["big"]
    sha = sha256_hex(data)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    staging = tmp_path / "cache" / "staging"
    staging.mkdir(parents=True)
    (staging / f"{sha}.part").write_bytes(data[:1000])
    (staging / f"{sha}.part.json").write_text(json.dumps(
        {"sha256": sha, "length": len(data), "etag": '"some-older-file"', "url": None}))
    client = make_client(origin, tmp_path)
    assert client.update(MODEL, CHANNEL).sha256 == sha
    request = origin.requests_to("/v1/artifacts/")[0]
    assert request["headers"]["If-Range"] == '"some-older-file"'
    assert origin.artifact_bytes_sent == len(data)  # served whole, not spliced


def test_partial_without_its_sidecar_is_not_trusted(origin, tmp_path, tflite_models):
    data = tflite_models["big"]
    sha = sha256_hex(data)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", data)
    staging = tmp_path / "cache" / "staging"
    staging.mkdir(parents=True)
    (staging / f"{sha}.part").write_bytes(b"\0" * 1000)
    client = make_client(origin, tmp_path)
    assert client.update(MODEL, CHANNEL).sha256 == sha
    assert "Range" not in origin.requests_to("/v1/artifacts/")[0]["headers"]


def _install_v1_then_offer_delta(origin, tmp_path, tflite_models, patch: bytes | None = None):
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1)
    client = make_client(origin, tmp_path)
    client.update(MODEL, CHANNEL)
    delta = origin.publish_delta(MODEL, 2, "tflite-fp32", v1, v2,
                                 patch if patch is not None else bsdiff4.diff(v1, v2))
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", v2, delta=delta)
    return client, delta


def test_delta_patch_is_used_when_the_base_is_installed(origin, tmp_path, tflite_models):
    client, delta = _install_v1_then_offer_delta(origin, tmp_path, tflite_models)
    v2 = tflite_models["v2"]
    info = client.check_for_update(MODEL, CHANNEL)
    assert info.is_delta and info.download_bytes == delta["length"] < len(v2)
    totals = set()
    model = client.apply_update(info, on_progress=lambda d, t: totals.add(t))
    assert model.version == 2 and active_sha(client) == sha256_hex(v2)
    assert totals == {delta["length"]}
    assert not origin.requests_to(f"/v1/artifacts/{sha256_hex(v2)}")
    assert origin.requests_to(f"/v1/artifacts/{delta['sha256']}")
    client.flush_telemetry()
    finished = [e for e in origin.telemetry_events.values()
                if e["kind"] == "download_finished" and e["version"] == 2]
    assert [e["bytes"] for e in finished] == [delta["length"]]


def test_bad_delta_falls_back_to_the_full_download(origin, tmp_path, tflite_models):
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    wrong = bsdiff4.diff(v1, v2[:-1] + bytes([v2[-1] ^ 1]))  # applies, wrong result
    client, _ = _install_v1_then_offer_delta(origin, tmp_path, tflite_models, patch=wrong)
    model = client.update(MODEL, CHANNEL)
    assert model.version == 2 and active_sha(client) == sha256_hex(v2)
    assert origin.requests_to(f"/v1/artifacts/{sha256_hex(v2)}")


def test_delta_is_not_offered_without_the_base(origin, tmp_path, tflite_models):
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    delta = origin.publish_delta(MODEL, 2, "tflite-fp32", v1, v2, bsdiff4.diff(v1, v2))
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", v2, delta=delta)
    origin.manifest_transform = lambda doc: {**doc, "delta": delta}  # offered anyway
    client = make_client(origin, tmp_path)
    info = client.check_for_update(MODEL, CHANNEL)
    assert not info.is_delta and info.download_bytes == len(v2)
    assert client.apply_update(info).sha256 == sha256_hex(v2)
