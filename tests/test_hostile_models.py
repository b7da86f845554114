"""Real hostile SavedModels uploaded with a publisher token, converted by the real worker.

Two servers: one as shipped (the op check refuses file ops before TensorFlow loads the
graph) and one with the op check off, which shows that the sandbox alone keeps the
server's files and secrets out of reach. Every text a client can see afterwards (API
responses, dashboard pages, CLI output over real HTTP) is searched for the secrets.
A SavedModel cannot fork or open sockets; tests/test_sandbox.py covers those with a
converter that is hostile Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import makers_hostile, makers_keras
from tests.helpers import ApiClient, base_settings
from tests.live import serve_app

pytestmark = pytest.mark.slow

SECRET = "planted-" + uuid.uuid4().hex
MARKER = "marker-" + uuid.uuid4().hex
META = {"variants": ["tflite-fp32"]}


class Server:
    def __init__(self, tmp: Path, **settings):
        from registry.app import create_app

        # Two workers: the jobs are queued together and two converter processes run at once
        # (the infinite loop holds one for its whole timeout).
        self.app = create_app(base_settings(tmp, worker_processes=2, convert_timeout=40,
                                            convert_memory_bytes=6 << 30, **settings), start_workers=True)
        self.svc = self.app.extensions["modeldrop"]
        self.data = Path(self.svc.settings.data_dir)
        (self.data / "planted-secret").write_text(SECRET)
        self.publisher = ApiClient(self.app.test_client(), self.svc.store.create_token("publisher").token)
        self.reader_token = self.svc.store.create_token("reader").token
        self.reader = ApiClient(self.app.test_client(), self.reader_token)
        self.jobs: list[tuple[str, int, str]] = []  # (model, version, job id)

    def secrets(self) -> list[str]:
        texts = [SECRET, (self.data / "admin-token").read_text().strip()]
        for pem in (self.data / "keys").glob("*.pem"):
            texts += [line for line in pem.read_text().splitlines() if len(line) > 20 and "-----" not in line]
        return texts

    def submit(self, name: str, zip_path: Path) -> dict:
        """Upload without waiting; returns the created version (with its job id)."""
        resp = self.publisher.upload(name, zip_path.read_bytes(), filename="model.zip", metadata=META)
        assert resp.status_code in (200, 201, 202), resp.get_json()
        return resp.get_json()

    def wait(self, name: str, created: dict, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.reader.get(f"/v1/jobs/{created['job']}").get_json()
            if job["state"] in ("done", "failed"):
                self.jobs.append((name, created["version"], created["job"]))
                return job
            time.sleep(0.5)
        raise AssertionError(f"job for {name} did not finish")

    def upload_all(self, uploads: dict[str, Path], meanwhile=None) -> dict[str, dict]:
        """Queue every upload first, then wait for each job: the workers take them in turn.
        ``meanwhile()``, if given, runs in this process while they do."""
        created = {name: self.submit(name, zip_path) for name, zip_path in uploads.items()}
        if meanwhile is not None:
            meanwhile()
        return {name: self.wait(name, version) for name, version in created.items()}

    def client_visible_texts(self) -> list[str]:
        texts = []
        pages = ["/v1/models", "/dashboard/", "/dashboard/jobs"]  # the jobs page shows every job error
        for name, version, job_id in self.jobs:
            pages += [f"/v1/jobs/{job_id}", f"/v1/models/{name}", f"/v1/models/{name}/versions",
                      f"/v1/models/{name}/versions/{version}", f"/dashboard/models/{name}",
                      f"/dashboard/models/{name}/versions/{version}"]
        for page in pages:
            resp = self.reader.get(page)
            assert resp.status_code == 200, page
            texts.append(resp.get_data(as_text=True))
        with serve_app(self.app) as url:
            env = {**os.environ, "MODELDROP_URL": url, "MODELDROP_TOKEN": self.reader_token}
            commands = [["models"]] + [c for name, version, job_id in self.jobs
                                       for c in (["show", name, str(version)], ["versions", name], ["job", job_id])]

            def cli(args: list[str]) -> str:
                done = subprocess.run([sys.executable, "-m", "registry.cli", *args], env=env,
                                      capture_output=True, text=True, timeout=120)
                return done.stdout + done.stderr

            # Two CLI processes at a time (each is mostly interpreter start-up).
            with ThreadPoolExecutor(max_workers=2) as pool:
                texts += list(pool.map(cli, commands))
        return texts

    def assert_nothing_leaked(self) -> None:
        texts = self.client_visible_texts()
        for secret in self.secrets():
            for text in texts:
                assert secret not in text
        for text in texts:
            assert str(self.data) not in text and "/tmp/pytest" not in text


def _markers_on_host(tmp_path: Path) -> list[str]:
    roots = [str(tmp_path), "/tmp", "/var/tmp", "/dev/shm", str(Path(__file__).resolve().parent.parent)]
    found = subprocess.run(["grep", "-rls", "--exclude-dir=.venv", "--exclude-dir=.git", MARKER, *roots],
                           capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if line]


def _finish(server: Server) -> None:
    server.svc.jobs.stop()


def test_hostile_savedmodels_are_refused_and_nothing_leaks(tmp_path):
    server = Server(tmp_path / "server")
    try:
        host_marker = Path("/tmp") / f"md-{MARKER}"
        cases = {
            "write-tmp": (makers_hostile.write_file_model(tmp_path / "w1.zip", host_marker, MARKER), "WriteFile"),
            "write-data": (makers_hostile.write_file_model(tmp_path / "w2.zip", server.data / "pwned", MARKER),
                           "WriteFile"),
            "read-token": (makers_hostile.read_file_model(tmp_path / "r1.zip", server.data / "admin-token"),
                           "ReadFile"),
            "read-key": (makers_hostile.read_file_model(tmp_path / "r2.zip", server.data / "keys" / "targets.pem"),
                         "ReadFile"),
            "read-to-output": (makers_hostile.read_file_to_output_model(tmp_path / "r3.zip",
                                                                         server.data / "planted-secret"), "ReadFile"),
            "list-dir": (makers_hostile.matching_files_model(tmp_path / "m1.zip", str(server.data / "*")),
                         "MatchingFiles"),
        }
        # The loop and the allocation first: no I/O op, so the check lets them through and the
        # sandbox's limits stop them; the loop holds a worker for its whole timeout.
        limits = {"loop": makers_hostile.infinite_loop_model(tmp_path / "loop.zip"),
                  "alloc": makers_hostile.huge_allocation_model(tmp_path / "alloc.zip", gigabytes=20)}
        honest = []
        jobs = server.upload_all({**limits, **{name: zip_path for name, (zip_path, _) in cases.items()}},
                                 meanwhile=lambda: honest.append(makers_keras.make_digits_model(tmp_path / "honest")))
        for name, (_, op) in cases.items():
            job = jobs[name]
            assert job["state"] == "failed", (name, job)
            assert job["error"].startswith("unsafe_model:") and op in job["error"], job["error"]
            version = server.reader.get(f"/v1/models/{name}/versions/1").get_json()
            assert version["status"] == "failed" and version["error"] == job["error"]
        job = jobs["loop"]
        assert job["state"] == "failed" and job["error"].startswith("timeout:"), job["error"]
        job = jobs["alloc"]
        assert job["state"] == "failed", job
        assert any(w in job["error"] for w in ("OOM", "memory", "ended by", "Resource")), job["error"]
        # The workers are still there (each has run hostile jobs) and convert the next honest upload.
        ((model, _),) = honest
        resp = server.publisher.upload("honest", model.read_bytes(), filename="model.keras", metadata=META)
        job_id = resp.get_json()["job"]
        deadline = time.monotonic() + 300
        while (job := server.reader.get(f"/v1/jobs/{job_id}").get_json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert job["state"] == "done", job
        assert not host_marker.exists() and not (server.data / "pwned").exists()
        assert _markers_on_host(tmp_path) == []
        server.assert_nothing_leaked()
    finally:
        _finish(server)


def test_with_the_op_check_off_the_sandbox_alone_holds(tmp_path):
    server = Server(tmp_path / "server", convert_op_check=False)
    try:
        host_marker = Path("/tmp") / f"md-off-{MARKER}"
        uploads = {
            "write-tmp": makers_hostile.write_file_model(tmp_path / "w1.zip", host_marker, MARKER),
            "write-data": makers_hostile.write_file_model(tmp_path / "w2.zip", server.data / "pwned", MARKER),
            "read-token": makers_hostile.read_file_model(tmp_path / "r1.zip", server.data / "admin-token"),
            "read-key": makers_hostile.read_file_model(tmp_path / "r2.zip", server.data / "keys" / "targets.pem"),
            "read-to-output": makers_hostile.read_file_to_output_model(tmp_path / "r3.zip",
                                                                       server.data / "planted-secret"),
        }
        states = {}
        for name, job in server.upload_all(uploads).items():
            states[name] = job["state"]
            if job["state"] == "failed":
                assert job["error"] and len(job["error"]) <= 1000
        # Reading a hidden file fails inside the sandbox: the job fails with a scrubbed reason.
        for name in ("read-token", "read-key", "read-to-output"):
            assert states[name] == "failed", states
        assert not host_marker.exists() and not (server.data / "pwned").exists()
        assert _markers_on_host(tmp_path) == []
        server.assert_nothing_leaked()
        # What the failed reads said: the file is not there, with the path scrubbed.
        error = server.reader.get("/v1/models/read-token/versions/1").get_json()["error"]
        assert "<path>" in error or "<work>" in error or "NOT_FOUND" in error, error
    finally:
        _finish(server)
