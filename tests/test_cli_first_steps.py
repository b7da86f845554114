"""The CLI a newcomer meets first: sticky failed versions, job summaries, why a release stopped,
`example`, `device fetch`, `doctor` (against a real server on loopback, click's CliRunner)."""

from __future__ import annotations

import json
from datetime import UTC

from tests.helpers import npz_bytes
from tests.makers import make_ready_version


def test_pushing_the_bytes_of_a_failed_version_again_says_so_and_fails(cli, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"k" * 5000)
    first = json.loads(cli("push", "digits", str(model), "--json").output)
    store = cli.server.services.store
    store.set_version_status(store.version_id("digits", first["version"]), "failed",
                             "evaluation set x has shape (5, 3), expected (N, 8, 8, 1)")
    fixed_eval = tmp_path / "eval.npz"
    fixed_eval.write_bytes(npz_bytes(1))  # never read: the version's bytes failed before
    again = cli("push", "digits", str(model), "--eval", str(fixed_eval), ok=False)
    assert again.exit_code == 1, again.output
    assert "digits version 1 already holds these bytes" in again.output
    assert "expected (N, 8, 8, 1)" in again.output  # the version's own error
    assert "modeldrop retry digits 1" in again.output and "modeldrop show digits 1" in again.output
    assert cli("push", "digits", str(model), "--json", ok=False).exit_code == 1


def test_pushing_identical_bytes_with_another_eval_set_says_it_was_not_applied(cli, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"m" * 5000)
    cli("push", "digits", str(model))
    other = tmp_path / "eval.npz"
    other.write_bytes(npz_bytes(2))
    again = cli("push", "digits", str(model), "--eval", str(other))
    assert "digits version 1: uploaded" in again.output
    assert "were not applied" in again.output


def test_job_prints_a_summary_and_json_on_request(cli, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"j" * 5000)
    job_id = json.loads(cli("push", "digits", str(model), "--json").output)["job"]
    out = cli("job", job_id).output
    assert out.startswith(f"job {job_id} (convert): digits version 1, queued"), out
    assert "{" not in out
    assert json.loads(cli("job", job_id, "--json").output)["id"] == job_id


def test_releases_say_why_a_release_is_paused_or_halted(cli):
    services = cli.server.services
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    cli("promote", "digits", "1", "--channel", "production")
    cli("promote", "digits", "2", "--channel", "beta")
    cli("rollout", "digits", "--channel", "production", "--pause", "--reason",
        "checking crash reports")
    services.store.halt_release("digits", "beta", 1, "load_failure_rate 0.2 >= 0.02",
                                actor="system", details={})
    out = cli("releases", "digits").output
    assert "release production#1 paused by token:1(bootstrap-admin)" in out, out
    assert out.rstrip().count("checking crash reports") == 1, out
    assert "release beta#1 halted by a guardrail: load_failure_rate 0.2 >= 0.02" in out, out
    reader = cli("token", "create", "--role", "reader").stdout.strip().splitlines()[0]
    as_reader = cli("releases", "digits", token=reader).output  # no audit log: the release says
    assert "release production#1 paused by token:1(bootstrap-admin)" in as_reader, as_reader
    assert "checking crash reports" in as_reader, as_reader
    production = json.loads(cli("releases", "digits", "--channel", "production", "--json",
                                token=reader).output)[0]
    assert production["paused_reason"] == "checking crash reports"
    assert production["paused_by"] == "token:1(bootstrap-admin)" and production["paused_at"]
    cli("rollout", "digits", "--channel", "production", "--resume")
    resumed = json.loads(cli("releases", "digits", "--channel", "production", "--json").output)[0]
    assert resumed["paused_reason"] is resumed["paused_by"] is resumed["paused_at"] is None


def test_doctor_passes_on_a_running_server_and_names_the_fix(cli):
    data_dir = str(cli.server.services.settings.data_dir)
    out = cli("doctor", "--data-dir", data_dir).output
    for name in ("database", "blobs", "keys", "disk", "server", "workers", "tuf"):
        assert any(line.startswith("OK") and f" {name} " in line for line in out.splitlines()), out
    assert "migrated (revision" in out and "private (0700/0600)" in out, out
    checks = {c["name"]: c for c in json.loads(cli("doctor", "--data-dir", data_dir,
                                                   "--json").output)}
    assert checks["sandbox"]["status"] in ("ok", "warn")

    key = cli.server.services.settings.resolved_keys_dir / "timestamp.pem"
    key.chmod(0o644)
    try:
        bad = cli("doctor", "--data-dir", data_dir, ok=False)
    finally:
        key.chmod(0o600)
    assert bad.exit_code == 1
    assert "readable by other users" in bad.output and "-> fix: chmod -R go-rwx" in bad.output


def test_doctor_reports_a_missing_data_dir_without_creating_it(cli, tmp_path):
    missing = tmp_path / "nowhere"
    out = cli("--url", "http://127.0.0.1:9", "doctor", "--data-dir", str(missing), ok=False)
    assert out.exit_code == 1
    assert "no database at" in out.output and "start the server once" in out.output
    assert "not checked: the server did not answer" in out.output
    assert not missing.exists()


def test_doctor_flags_an_expired_timestamp(live_server):
    from datetime import datetime

    from registry.cli._doctor import _timestamp

    assert _timestamp(live_server.base_url).status == "ok"
    later = _timestamp(live_server.base_url, now=datetime(2100, 1, 1, tzinfo=UTC))
    assert later.status == "fail" and "expired" in later.detail


def test_doctor_says_when_no_worker_takes_jobs(services):
    from datetime import datetime, timedelta

    from registry.cli._doctor import _workers

    assert _workers(services.settings).status == "ok"
    version = make_ready_version(services, "digits")
    version_id = services.store.version_id("digits", version.version)
    services.store.create_job(version_id)
    later = datetime.now(UTC) + timedelta(minutes=10)
    stuck = _workers(services.settings, now=later)
    assert stuck.status == "fail" and "no worker is taking jobs" in stuck.detail, stuck
    assert "restart the server" in stuck.fix or "celery" in stuck.fix
    services.store.claim_job()  # a worker took it: a second job waits behind a busy worker
    services.store.create_job(version_id)
    busy = _workers(services.settings, now=later)
    assert busy.status == "warn" and "busy" in busy.detail, busy
    # /healthz of a `modeldrop serve` whose workers all died (503 no_workers) fails the check
    dead = _workers(services.settings, {"status": "no_workers",
                                        "workers": {"alive": 0, "expected": 1, "restarts": 4}})
    assert dead.status == "fail" and "0 of 1 worker(s) alive (4 restarts)" in dead.detail, dead


def test_device_fetch_drops_only_the_delegate_banner_from_native_stderr(capfd):
    import os

    from registry.cli._device import _without_delegate_banner

    with _without_delegate_banner():  # native code writes to fd 2, not to sys.stderr
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something a user must see\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "something a user must see" in err and "after" in err, err


def test_doctor_as_a_subprocess_reads_worker_liveness_and_the_stale_setting(tmp_path):
    """`modeldrop doctor` against a real `modeldrop serve`: the worker count comes from
    /healthz, and a job waits too long past MODELDROP_JOB_STALE_AFTER (2 s here), not 120 s."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, data_dir = f"http://127.0.0.1:{port}", tmp_path / "data"
    env = dict(os.environ, MODELDROP_JOB_STALE_AFTER="2")
    env.pop("MODELDROP_URL", None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--data-dir",
                             str(data_dir), "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)

    def doctor() -> dict:
        out = subprocess.run([sys.executable, "-m", "registry.cli", "--url", url, "doctor",
                              "--data-dir", str(data_dir), "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        return {c["name"]: c for c in json.loads(out.stdout)} | {"exit": out.returncode}

    worker = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                body = requests.get(f"{url}/healthz", timeout=5).json()
                if body["workers"]["pids"]:
                    break
            except (requests.ConnectionError, ValueError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        worker = body["workers"]["pids"][0]
        healthy = doctor()
        assert healthy["workers"]["status"] == "ok", healthy
        assert "1 of 1 worker(s) alive" in healthy["workers"]["detail"], healthy
        assert "2 s (MODELDROP_JOB_STALE_AFTER)" in healthy["workers"]["detail"], healthy

        os.kill(worker, signal.SIGSTOP)  # alive for the supervisor, but it takes no job
        token = (data_dir / "admin-token").read_text().strip()
        pushed = requests.post(f"{url}/v1/models/digits/versions", timeout=30,
                               headers={"Authorization": f"Bearer {token}"},
                               files={"file": ("m.keras", b"k" * 5000)}, data={"metadata": "{}"})
        assert pushed.status_code == 201, pushed.text
        time.sleep(3)
        stuck = doctor()
        assert stuck["exit"] == 1, stuck
        assert stuck["workers"]["status"] == "fail", stuck
        assert "no worker is taking jobs" in stuck["workers"]["detail"], stuck
        assert "over 2 s (MODELDROP_JOB_STALE_AFTER)" in stuck["workers"]["detail"], stuck
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
