"""The SDK as its own distribution: both wheels are built, the SDK wheel is installed alone
in a fresh virtualenv, nothing of the server's stack comes with it, and the SDK's own test
suite (client_sdk/tests: the conformance vectors, and the live tests against a real server
started here) passes from there.

No network: the fresh virtualenv installs from a wheelhouse made of the distributions
already installed in this one (repacked from their RECORD files), so it gets exactly the
SDK's dependency closure and pip cannot fetch anything else.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.makers import make_ready_version
from tests.sdk_origin import make_mlpackage_zip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SDK_RUNTIME = {"requests", "urllib3", "tuf", "securesystemslib", "cryptography", "bsdiff4",
               "packaging"}
# The server's own stack: none of it may reach a device that installs the SDK.
SERVER_STACK = {"modeldrop", "flask", "werkzeug", "sqlmodel", "sqlalchemy", "alembic",
                "psycopg", "psycopg-binary", "boto3", "botocore", "celery", "kombu", "redis",
                "numpy", "scipy", "matplotlib", "gunicorn", "ai-edge-litert", "click", "tqdm",
                "pydantic", "tensorflow-cpu", "coremltools"}


def _run(*args: str, cwd: Path | None = None, env: dict | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _offline_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    return env


def _wheel_metadata(wheel: Path) -> metadata.PackageMetadata:
    from email.parser import Parser

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())  # type: ignore[return-value]


def _closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions ``requirements`` need, transitively."""
    seen: set[str] = set()
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        extras = req.extras
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras) \
                    or (not extras and sub.marker.evaluate({"extra": ""})):
                todo.append((sub, ()))
    return {n for n in seen if "[" not in n}


def _repack(name: str, out_dir: Path) -> Path:
    """A wheel of the installed distribution ``name``, from its RECORD."""
    dist = metadata.distribution(name)
    site = Path(dist.locate_file(""))
    info = next(f for f in dist.files if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tag = next(line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
               if line.startswith("Tag:"))
    dist_info = info.parent.as_posix()
    wheel = out_dir / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
    rows = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            path = f.as_posix()
            if path.startswith("..") or "__pycache__" in path or path.endswith(
                    ("/RECORD", "/INSTALLER", "/direct_url.json", "/REQUESTED")):
                continue
            data = (site / path).read_bytes()
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append((path, f"sha256={digest.decode()}", str(len(data))))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows + [(f"{dist_info}/RECORD", "", "")])
        zf.writestr(f"{dist_info}/RECORD", buf.getvalue())
    return wheel


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """Both wheels, and a fresh virtualenv with the SDK wheel (plus pytest) installed."""
    work = tmp_path_factory.mktemp("dist")
    wheels = work / "wheels"
    for project in (ROOT / "client_sdk", ROOT):
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheels), str(project), env=_offline_env(), cwd=work)
    sdk_wheel = next(wheels.glob("modeldrop_sdk-*.whl"))
    server_wheel = next(wheels.glob("modeldrop-*.whl"))

    requires = _wheel_metadata(sdk_wheel).get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    house = work / "wheelhouse"
    house.mkdir()
    for name in sorted(_closure(runtime + ["pytest"])):
        _repack(name, house)

    venv = work / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    _run(str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house),
         str(sdk_wheel), "pytest", env=_offline_env(), cwd=work)
    listed = json.loads(_run(str(py), "-m", "pip", "list", "--format", "json",
                             env=_offline_env(), cwd=work).stdout)
    return {"work": work, "sdk_wheel": sdk_wheel, "server_wheel": server_wheel, "python": py,
            "installed": {canonicalize_name(p["name"]): p["version"] for p in listed}}


def test_sdk_wheel_declares_only_what_the_sdk_imports(dist):
    meta = _wheel_metadata(dist["sdk_wheel"])
    assert meta["Name"] == "modeldrop-sdk" and meta["Requires-Python"] == ">=3.9"
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert runtime == SDK_RUNTIME
    for r in requires:  # lower bounds only: no exact pins, no upper caps
        assert all(s.operator == ">=" for s in r.specifier), r
    assert set(meta.get_all("Provides-Extra")) == {"litert", "coreml"}
    litert = {canonicalize_name(r.name) for r in requires
              if r.marker is not None and r.marker.evaluate({"extra": "litert"})}
    assert litert == {"ai-edge-litert", "numpy"}
    with zipfile.ZipFile(dist["sdk_wheel"]) as zf:
        top = {n.split("/", 1)[0] for n in zf.namelist()}
    assert top == {"client_sdk", "modeldrop_sdk-0.1.0.dist-info"}


def test_server_wheel_depends_on_the_sdk_and_does_not_carry_it(dist):
    meta = _wheel_metadata(dist["server_wheel"])
    names = {canonicalize_name(Requirement(r).name) for r in meta.get_all("Requires-Dist")}
    assert "modeldrop-sdk" in names
    with zipfile.ZipFile(dist["server_wheel"]) as zf:
        assert not [n for n in zf.namelist() if n.startswith("client_sdk/")]


def test_nothing_of_the_server_stack_is_installed_with_the_sdk(dist):
    installed = dist["installed"]
    assert "modeldrop-sdk" in installed
    assert not SERVER_STACK & set(installed), SERVER_STACK & set(installed)
    print("SDK venv:", ", ".join(f"{k} {v}" for k, v in sorted(installed.items())))


def test_the_sdk_suite_passes_from_the_fresh_venv_against_a_real_server(dist, live_server):
    server = live_server
    version = make_ready_version(server.services, "digits", variants={
        "coreml-fp16": {"format": "coreml", "data": make_mlpackage_zip()}})
    resp = requests.post(f"{server.base_url}/v1/models/digits/releases",
                         json={"version": version.version, "channel": "production"},
                         headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=10)
    assert resp.status_code == 201, resp.text

    site = _run(str(dist["python"]), "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                env=_offline_env(), cwd=dist["work"]).stdout.strip()
    env = _offline_env() | {"MODELDROP_SDK_TEST_URL": server.base_url,
                            "MODELDROP_SDK_TEST_MODEL": "digits",
                            "MODELDROP_SDK_EXPECT_PREFIX": site,
                            "MODELDROP_CONFORMANCE_DIR": str(ROOT / "conformance")}
    # From outside the checkout, with its own config: only the installed SDK is importable.
    proc = _run(str(dist["python"]), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "-c", str(ROOT / "client_sdk" / "tests" / "pytest.ini"),
                "--rootdir", str(ROOT / "client_sdk" / "tests"), "-rs",
                str(ROOT / "client_sdk" / "tests"), env=env, cwd=dist["work"])
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout
