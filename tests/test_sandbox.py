"""The converter sandbox against a converter that is fully hostile (tests/hostile_payload.py).

Each test starts the real sandbox (bubblewrap, a separate uid when run as root, limits)
around a payload that tries what a compromised model could: read the server's secrets,
write outside its work directory, reach a database, fork, allocate, hang, fill the disk,
and lie in its result. CI installs bubblewrap (scripts/test.sh), so ``full`` is required.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import base_settings

SECRET = "sekrit-" + uuid.uuid4().hex


@pytest.fixture
def server(tmp_path):
    """A real registry data dir (keys, admin token, database) with a planted secret."""
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, convert_max_processes=64, convert_memory_bytes=2 << 30))
    svc = app.extensions["modeldrop"]
    data = Path(svc.settings.data_dir)
    (data / "keys" / "planted-secret.pem").write_text(SECRET)
    return svc


def _run(svc, action: str, args: dict, *, timeout: float = 60, work_cap: int | None = None, **settings):
    from registry.jobs.sandbox import JobDirs, Sandbox

    sandbox = Sandbox(svc.settings.replace(**settings) if settings else svc.settings)
    dirs = JobDirs(Path(svc.work_dir) / f"job-{uuid.uuid4().hex[:8]}")
    sandbox.prepare(dirs)
    messages: list[dict] = []
    outcome = sandbox.run(dirs, "tests.hostile_payload", [action, json.dumps(args)], file_bytes=64 << 20,
                          timeout=timeout, on_message=messages.append, work_cap_bytes=work_cap)
    return outcome, messages, dirs


def test_sandbox_is_full_here(server):
    from registry.jobs.sandbox import Sandbox

    status = Sandbox(server.settings).status()
    assert status.state == "full", status.reason
    assert "no-network" in status.layers and "hidden-data-dir" in status.layers


def test_data_and_keys_dirs_are_private(server):
    data = Path(server.settings.data_dir)
    assert data.stat().st_mode & 0o777 == 0o700
    assert server.settings.resolved_keys_dir.stat().st_mode & 0o777 == 0o700
    assert (data / "admin-token").stat().st_mode & 0o777 == 0o600


def test_limits_uid_and_privileges(server):
    outcome, messages, _ = _run(server, "limits", {})
    assert outcome.returncode == 0
    report = messages[0]
    assert report["limits"]["RLIMIT_AS"] == [2 << 30, 2 << 30]
    assert report["limits"]["RLIMIT_NPROC"] == [64, 64]
    assert report["limits"]["RLIMIT_CORE"] == [0, 0]
    assert report["limits"]["RLIMIT_FSIZE"] == [64 << 20, 64 << 20]
    assert report["no_new_privs"] and int(report["cap_eff"], 16) == 0
    if os.geteuid() == 0:
        assert report["uid"] == server.settings.sandbox_uid


def test_secrets_are_out_of_reach(server, monkeypatch):
    monkeypatch.setenv("MODELDROP_S3_SECRET_KEY", SECRET)  # the worker's environment
    data = Path(server.settings.data_dir)
    targets = [str(data / "admin-token"), str(data / "keys" / "planted-secret.pem"),
               str(data / "keys" / "targets.pem"), str(data / "modeldrop.db"), "/etc/shadow",
               f"/proc/{os.getpid()}/environ", f"/proc/{os.getpid()}/cmdline"]
    targets += [str(p) for p in (data / "keys").iterdir()]
    outcome, messages, _ = _run(server, "read", {"paths": targets})
    assert outcome.returncode == 0
    report = messages[0]
    for path, content in report["read"].items():
        assert content.startswith("ERR") or SECRET not in content, path
    for path in targets:
        assert report["read"][path].startswith("ERR"), path
    # Its own PID namespace: the worker and every other host process are invisible.
    assert os.getpid() not in report["pids"] and max(report["pids"]) < 50
    assert not [k for k in report["env"] if k.startswith("MODELDROP_") or "SECRET" in k]
    assert set(report["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "PYTHONNOUSERSITE",
                                  "PYTHONDONTWRITEBYTECODE", "TF_CPP_MIN_LOG_LEVEL", "MPLCONFIGDIR",
                                  "KERAS_HOME", "LC_CTYPE", "PWD"}


def test_writes_outside_the_work_dir_land_nowhere(server, tmp_path):
    data = Path(server.settings.data_dir)
    marker = "marker-" + uuid.uuid4().hex
    project = Path(__file__).resolve().parent.parent
    paths = [str(data / "pwned"), str(data / "keys" / "pwned"), "/tmp/pwned-" + marker, "/var/tmp/pwned-" + marker,
             "/dev/shm/pwned-" + marker, str(project / "pwned"), str(Path.home() / "pwned"), str(tmp_path / "pwned"),
             str(Path(server.work_dir) / "pwned")]
    outcome, messages, dirs = _run(server, "write", {"paths": paths, "marker": marker})
    assert outcome.returncode == 0
    wrote = messages[0]["wrote"]
    # Some paths are fresh, private tmpfs inside the sandbox: writes succeed there and vanish.
    for p in paths:
        assert not Path(p).exists(), f"{p} was written on the host"
    found = subprocess.run(["grep", "-rl", marker, str(tmp_path), "/tmp", "/var/tmp", "/dev/shm", str(project)],
                           capture_output=True, text=True)
    assert found.stdout.strip() == "", found.stdout
    assert set(wrote) <= {p for p in paths if p.startswith(("/tmp", "/var/tmp", "/dev/shm"))} | {
        p for p in paths if Path(p).parent == data or Path(p).parent.parent == data}


def test_no_network_and_no_service_sockets(server):
    unix = [p for p in ("/run/postgresql/.s.PGSQL.5432", "/var/run/postgresql/.s.PGSQL.5432",
                        "/run/mysqld/mysqld.sock", "/var/run/redis/redis-server.sock") if os.path.exists(p)]
    tcp = [["127.0.0.1", 5432], ["127.0.0.1", 6379], ["127.0.0.1", 5672], ["::1", 5432]]
    outcome, messages, _ = _run(server, "connect", {"tcp": tcp, "unix": unix})
    assert outcome.returncode == 0
    assert messages[0]["reached"] == []


def test_fork_bomb_stops_at_the_process_limit(server):
    tag = uuid.uuid4().hex
    outcome, messages, _ = _run(server, "fork_bomb", {"attempts": 5000, "tag": tag}, timeout=60)
    assert messages and messages[0]["forked"] < 64
    assert messages[0]["stopped_by"] is not None
    # The PID namespace dies with the sandbox: none of the sleeping children is left.
    left = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_memory_is_capped(server):
    outcome, messages, _ = _run(server, "allocate", {"bytes": 20 << 30})
    assert messages[0] == {"allocated": 0, "memory_error": True}


def test_deadline_kills_a_hang(server):
    tag = uuid.uuid4().hex
    outcome, messages, _ = _run(server, "sleep", {"seconds": 3600, "tag": tag}, timeout=3)
    assert outcome.timed_out
    assert messages == [{"sleeping": True}]
    left = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_disk_is_capped(server):
    # The file-size limit (64 MB here) stops one file; the work-directory cap stops many.
    outcome, messages, dirs = _run(server, "fill_disk", {"dir": ".", "megabytes": 200}, timeout=60)
    assert messages[0]["written_mb"] <= 64 and messages[0].get("error") == 27  # EFBIG
    outcome, messages, dirs = _run(server, "fill_disk", {"dir": ".", "megabytes": 60, "pause": 0.05},
                                   timeout=60, work_cap=20 << 20)
    assert outcome.over_disk and not messages


@pytest.mark.parametrize("how", ["symlink", "fifo", "hardlink", "liar"])
def test_forged_results_are_rejected(server, how):
    from registry.jobs.results import accept_variants, load_result

    secret_file = Path(server.settings.data_dir) / "keys" / "planted-secret.pem"
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    if how == "liar":  # claims the digest of the secret for other bytes
        digest = hashlib.sha256(b"other bytes!").hexdigest()
    outcome, messages, dirs = _run(server, "forge_result", {
        "work": ".", "variants": {"tflite-fp32": how}, "target": str(secret_file), "sha256": digest,
        "size": len(SECRET)})
    assert messages == [{"forged": 1}], messages
    document = load_result(dirs.work)
    results = accept_variants(document, ["tflite-fp32"], dirs.work, dirs.accepted, max_artifact_bytes=1 << 20)
    assert results[0].error and not results[0].servable and results[0].path is None
    assert "rejected" in results[0].error
    assert not any(SECRET in p.read_text(errors="replace") for p in dirs.accepted.iterdir())


def test_a_forged_result_with_hostile_fields_fails_that_variant_only(server):
    from registry.jobs.results import accept_variants, load_result

    body = "honest tflite bytes"
    good = hashlib.sha256(body.encode()).hexdigest()
    outcome, messages, dirs = _run(server, "forge_result", {
        "work": ".", "variants": {"tflite-fp32": body, "tflite-fp16": body}, "sha256": good, "size": len(body),
        "target": "", "fidelity": {"top1_agreement": 1.0, "note": f"see {server.settings.data_dir}/admin-token"}})
    document = load_result(dirs.work)
    document["variants"][1]["fidelity"] = {"x": float("nan")}
    results = accept_variants(document, ["tflite-fp32", "tflite-fp16", "tflite-int8-dynamic"], dirs.work,
                              dirs.accepted, max_artifact_bytes=1 << 20)
    by_name = {r.name: r for r in results}
    assert by_name["tflite-fp32"].error is None and by_name["tflite-fp32"].servable
    assert by_name["tflite-fp32"].path.read_bytes() == body.encode()
    assert str(server.settings.data_dir) not in json.dumps(by_name["tflite-fp32"].fidelity)
    assert by_name["tflite-fp16"].error and "rejected" in by_name["tflite-fp16"].error
    assert by_name["tflite-int8-dynamic"].error  # missing from the report


def test_scrub_removes_paths_and_key_material(tmp_path):
    from registry.jobs.results import scrub

    work = tmp_path / "job" / "work"
    pem = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGk0dWJhZ2VyYmFnZXJiYWdlcmJhZ2VyYmFnZXI=\n"
           "-----END PRIVATE KEY-----")
    text = (f"cannot load {work}/source/saved_model.pb: see /srv/modeldrop-data/keys/targets.pem\n{pem}\n"
            f"token md_{'a' * 43} Data: {SECRET * 3}")
    out = scrub(text, work)
    assert "<work>/source/saved_model.pb" in out and "<path>" in out
    assert "/srv" not in out and "PRIVATE KEY" not in out and "a" * 43 not in out and "\n" not in out
    assert len(scrub("x" * 10_000)) <= 400


def test_degraded_when_bubblewrap_is_missing(tmp_path, caplog):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, bwrap_path="/nonexistent/bwrap", convert_sandbox="auto"))
    body = app.test_client().get("/healthz").get_json()
    assert body["sandbox"] == "degraded" and "not installed" in body["sandbox_reason"]
    assert any("converter sandbox: DEGRADED" in r.getMessage() for r in caplog.records)


def test_required_sandbox_refuses_to_run_degraded(tmp_path):
    from registry.jobs.sandbox import JobDirs, Sandbox, SandboxUnavailableError

    sandbox = Sandbox(base_settings(tmp_path, bwrap_path="/nonexistent/bwrap", convert_sandbox="required"))
    dirs = JobDirs(tmp_path / "job")
    sandbox.prepare(dirs)
    with pytest.raises(SandboxUnavailableError):
        sandbox.run(dirs, "tests.hostile_payload", ["limits", "{}"], file_bytes=1 << 20, timeout=10,
                    on_message=lambda m: None)


def test_healthz_reports_full(server, tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path / "second"))
    assert app.test_client().get("/healthz").get_json()["sandbox"] == "full"


def test_web_process_does_not_start_tensorflow_for_the_probe(tmp_path):
    code = ("import sys; from registry.app import create_app; from tests.helpers import base_settings; "
            "from pathlib import Path; create_app(base_settings(Path(sys.argv[1])));"
            "print(sorted(m for m in ('tensorflow', 'torch', 'coremltools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_relative_data_dir_converts(tmp_path, monkeypatch):
    """`modeldrop serve --data-dir ./modeldrop-data` (README command 1) gives relative paths."""
    from registry.config import Settings
    from registry.convert.catalog import ConversionError
    from registry.jobs.conversion import convert_file

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a keras archive")
    settings = Settings.load({"data_dir": "rel-data", "convert_sandbox": "required"}, environ={})
    Path("rel-data/work").mkdir(parents=True)
    with pytest.raises(ConversionError) as raised:
        convert_file(settings, bad, Path("rel-data/work/job"), variants=["tflite-fp32"])
    # The loader ran in the sandbox and answered; the sandbox itself did not fail to start.
    assert str(raised.value).startswith("cannot load source.keras"), raised.value


def test_an_interpreter_under_tmp_is_bound_back(tmp_path):
    """A clone and its venv in /tmp (where CI may check out) must still run in the sandbox,
    whose /tmp is a fresh tmpfs: interpreter paths under it are bound back read-only."""
    import site
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    # This venv sees the project's packages through a .pth file, as an editable install does.
    target = next(env_dir.glob("lib/python3*/site-packages"))
    (target / "project.pth").write_text("\n".join([*site.getsitepackages(), str(Path(__file__).resolve().parents[1])]))
    code = ("import sys; from registry.config import Settings; from registry.jobs.sandbox import Sandbox; "
            "s = Sandbox(Settings.load({'data_dir': sys.argv[1]}, environ={})).status(); print(s.state, s.reason)")
    done = subprocess.run([str(env_dir / "bin" / "python"), "-c", code, str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "full None", done.stdout + done.stderr
