"""PyTorch uploads through the real server, as a user pushes them: `modeldrop` as a subprocess
over real HTTP on loopback, the worker converting in the sandbox, a device fetching the result.

Also the hostile side: a PyTorch file is code (its archive holds pickles), so a `.pt`/`.pt2`
whose pickles try to write a marker on the host and read the server's secrets must fail as a
job, with the marker never appearing and no secret in anything a client can see.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import makers_torch
from tests.helpers import ApiClient, base_settings, wait_job
from tests.live import serve_app

pytestmark = pytest.mark.slow

SECRET = "planted-" + uuid.uuid4().hex
MARKER = "marker-" + uuid.uuid4().hex
VARIANTS = ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp16"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from registry.app import create_app

    tmp = tmp_path_factory.mktemp("torch-server")
    app = create_app(base_settings(tmp, worker_processes=1, convert_timeout=300), start_workers=True)
    services = app.extensions["modeldrop"]
    data = Path(services.settings.data_dir)
    (data / "planted-secret").write_text(SECRET)
    with serve_app(app) as url:
        yield {"url": url, "app": app, "services": services, "data": data, "tmp": tmp}
    services.jobs.stop()


def _cli(server, *args, cwd: Path, token: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    token = token or (server["data"] / "admin-token").read_text().strip()
    env = {**os.environ, "MODELDROP_URL": server["url"], "MODELDROP_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _wait(server, job_id: str, timeout: float = 300) -> dict:
    client = server["app"].test_client()
    token = (server["data"] / "admin-token").read_text().strip()
    return wait_job(lambda j: client.get(f"/v1/jobs/{j}", headers={"Authorization": f"Bearer {token}"})
                    .get_json(), job_id, timeout)


def test_a_pt2_pushed_with_the_cli_converts_and_runs_on_a_device(server, tmp_path):
    paths, _ = makers_torch.make_torch_digits(tmp_path / "model")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"framework": "pytorch", "labels": [str(i) for i in range(10)],
                                "variants": VARIANTS}))
    pushed = _cli(server, "push", "torch-digits", str(paths.pt2_path), "--metadata", str(meta),
                  "--eval", str(paths.eval_npz), "--wait", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "torch-digits version 1" in pushed.stdout
    shown = _cli(server, "show", "torch-digits", "1", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    version = json.loads(shown.stdout)
    assert version["status"] == "ready" and version["source"]["format"] == "pt2"
    variants = {v["name"]: v for v in version["variants"]}
    assert sorted(variants) == sorted(VARIANTS)
    for name in VARIANTS:
        assert variants[name]["servable"], variants[name]
    assert variants["tflite-fp32"]["fidelity"]["max_abs_error"] < 1e-4
    assert variants["tflite-fp32"]["fidelity"]["accuracy"] > 0.85
    assert variants["tflite-int8-dynamic"]["fidelity"]["top1_agreement"] > 0.95

    promoted = _cli(server, "promote", "torch-digits", "1", "--channel", "production", cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    fetched = _cli(server, "device", "fetch", "torch-digits", "--channel", "production",
                   "--eval", str(paths.eval_npz), cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "device runs torch-digits v1 (tflite-" in fetched.stdout, fetched.stdout
    # The device ran the installed artifact in LiteRT on the eval set (channels first, as in torch).
    accuracy = float(re.search(r"run: accuracy ([0-9.]+) on 397 eval samples", fetched.stdout).group(1))
    assert accuracy > 0.85, fetched.stdout


def test_a_pt2_that_is_not_a_zip_is_refused_at_upload_and_nothing_is_stored(server, tmp_path):
    fake = tmp_path / "model.pt2"
    fake.write_bytes(b"\x80\x04 a bare pickle, not a torch.export archive" * 10)
    pushed = _cli(server, "push", "not-a-pt2", str(fake), cwd=tmp_path)
    assert pushed.returncode == 1
    assert "unsupported_format" in pushed.stderr or "not a torch.export ExportedProgram" in pushed.stderr, pushed.stderr
    assert "not a torch.export ExportedProgram" in pushed.stderr
    listed = _cli(server, "versions", "not-a-pt2", cwd=tmp_path)
    assert listed.returncode != 0 or "not-a-pt2" not in listed.stdout
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx" * 100)
    pushed = _cli(server, "push", "onnx-model", str(onnx), cwd=tmp_path)
    assert pushed.returncode == 1 and "coremltools 9 does not read ONNX" in pushed.stderr, pushed.stderr


def _payload(host_marker: Path, data: Path) -> str:
    # The marker is spelt backwards in the file, so that a search of the host for it finds only
    # what the payload wrote, never the stored upload.
    marker = f"{MARKER[::-1]!r}[::-1]"
    return (
        f"import pathlib\n"
        f"pathlib.Path({str(host_marker)!r}).write_text({marker})\n"
        f"pathlib.Path({str(data / 'pwned')!r}).write_text({marker})\n"
        f"raise RuntimeError('secret: ' + pathlib.Path({str(data / 'planted-secret')!r}).read_text()"
        f" + pathlib.Path({str(data / 'admin-token')!r}).read_text())\n"
    )


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_hostile_pickles_fail_as_a_job_and_touch_nothing(server, tmp_path, suffix):
    host_marker = Path("/tmp") / f"md-torch-{uuid.uuid4().hex}{suffix}"  # the marker is its content only
    data = server["data"]
    hostile = makers_torch.hostile_pickle_archive(tmp_path / f"hostile{suffix}", _payload(host_marker, data))
    eval_npz = tmp_path / "eval.npz"
    import numpy as np

    np.savez(eval_npz, x=np.zeros((4, 1, 8, 8), np.float32))
    services = server["services"]
    publisher = ApiClient(server["app"].test_client(), services.store.create_token("publisher").token)
    name = "hostile" + suffix.replace(".", "-")
    resp = publisher.upload(name, hostile.read_bytes(), filename=f"model{suffix}", eval_bytes=eval_npz.read_bytes(),
                            metadata={"variants": ["tflite-fp32"]})
    assert resp.status_code in (200, 201, 202), resp.get_json()
    job = _wait(server, resp.get_json()["job"])
    assert job["state"] == "failed", job
    assert "not a " in job["error"], job["error"]  # the loader's reason, scrubbed
    assert not host_marker.exists() and not (data / "pwned").exists()
    admin = (data / "admin-token").read_text().strip()
    reader = ApiClient(server["app"].test_client(), services.store.create_token("reader").token)
    for page in (f"/v1/jobs/{job['id']}", f"/v1/models/{name}/versions/1", f"/v1/models/{name}"):
        text = reader.get(page).get_data(as_text=True)
        assert SECRET not in text and admin not in text and str(data) not in text
    version = reader.get(f"/v1/models/{name}/versions/1").get_json()
    assert version["status"] == "failed" and not [v for v in version["variants"] if v.get("servable")]
    found = subprocess.run(["grep", "-rls", "--exclude-dir=.venv", "--exclude-dir=.git", MARKER,
                            str(server["tmp"]), "/tmp", "/var/tmp", "/dev/shm"], capture_output=True, text=True)
    hits = [line for line in found.stdout.splitlines() if line and not line.startswith(str(tmp_path))]
    assert hits == [], hits
