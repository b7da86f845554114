"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests refer only to
commands, modules, files, settings and ports that exist, and the manifests pass the
Kubernetes API schemas (kubernetes-validate, strict: an unknown field fails)."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCS = (ROOT / "docs" / "deployment.md").read_text()
GUNICORN_CONF = (DEPLOY / "gunicorn.conf.py").read_text()


def _settings_env() -> set[str]:
    from registry.config import Settings

    return {"MODELDROP_" + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "extra"}


def _gunicorn_port() -> int:
    bind = re.search(r'MODELDROP_BIND", "([^"]+)"', GUNICORN_CONF).group(1)
    return int(bind.rsplit(":", 1)[1])


def _module_defines(module: str, name: str) -> bool:
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{module} is not a module of this checkout"
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets)
               for n in tree.body)


def _check_env(names) -> None:
    known = _settings_env()
    for name in names:
        if name.startswith("MODELDROP_"):
            assert name in known or f"``{name}``" in GUNICORN_CONF, f"{name} is no setting"
            assert f"`{name}`" in DOCS or name in GUNICORN_CONF, f"{name} is not in docs/deployment.md"


def _check_command(argv: list[str]) -> None:
    """A command a container runs: gunicorn with the conf and WSGI app, or celery's worker or
    beat on the app module and the queue the tasks are sent to."""
    program = argv[0]
    setup = (ROOT / "setup.py").read_text()
    assert f'"{program}' in setup, f"{program} is not a dependency in setup.py"
    if program == "gunicorn":
        conf = argv[argv.index("-c") + 1]
        assert (ROOT / conf.removeprefix("/app/")).is_file()
        module, attr = argv[-1].split(":")
        assert _module_defines(module, attr)
        return
    assert program == "celery", argv
    module = argv[argv.index("-A") + 1]
    assert _module_defines(module, "app")
    role = argv[argv.index("-A") + 2]
    assert role in ("worker", "beat"), argv
    assert "-B" not in argv, "the beat runs once, on its own (docs/deployment.md)"
    if role == "worker":
        # The general queue (maintenance, delta jobs) and every toolchain's queue: this image
        # holds TensorFlow and PyTorch, so its workers take every job.
        from registry.convert.catalog import GENERAL_QUEUE, TOOLCHAIN_QUEUES

        queues = argv[argv.index("-Q") + 1].split(",")
        assert f'task_default_queue="{queues[0]}"' in (ROOT / "registry/jobs/celery_app.py").read_text()
        assert queues[0] == GENERAL_QUEUE and set(queues[1:]) == set(TOOLCHAIN_QUEUES.values()), queues
        assert argv[argv.index("--concurrency") + 1] == "1"
    # The command is the one docs/deployment.md gives (a schedule file path aside).
    documented = " ".join(argv[:argv.index("-s")] if "-s" in argv else argv)
    assert documented in DOCS, f"{documented!r} is not in docs/deployment.md"


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile_refers_to_what_exists():
    steps = _dockerfile()
    copied = {}
    for instr, rest in steps:
        if instr == "COPY":
            *sources, dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
            copied[dest] = sources
        if instr == "ENV":
            _check_env(kv.split("=")[0] for kv in rest.split())
    cmd = json.loads(next(rest for instr, rest in steps if instr == "CMD"))
    _check_command(cmd)
    conf = cmd[cmd.index("-c") + 1]
    assert copied.get(conf) == ["deploy/gunicorn.conf.py"], "the -c file is not copied into the image"
    assert int(next(rest for instr, rest in steps if instr == "EXPOSE")) == _gunicorn_port()


def test_compose_refers_to_what_exists():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    runs = 0
    for name, svc in services.items():
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        if "command" in svc and "image" not in svc:
            _check_command(shlex.split(svc["command"]))
            runs += 1
        _check_env(svc.get("environment", {}))
        for port in svc.get("ports", []):
            assert int(str(port).split(":")[-1]) == _gunicorn_port(), name
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in doc["volumes"], volume
    assert runs == 2  # the worker and the beat; the web runs the image's CMD
    env = services["web"]["environment"]
    host = env["MODELDROP_S3_ENDPOINT_URL"].split("//")[1].split(":")[0]
    assert host in services and env["MODELDROP_BROKER_URL"].split("//")[1].split(":")[0] in services
    # several web processes: their rate-limit counters must live in a Redis of the compose file
    limits = env["MODELDROP_RATE_LIMIT_STORAGE_URL"]
    assert limits.startswith("redis://") and limits.split("//")[1].split(":")[0] in services


def _manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "modeldrop.yaml").read_text()) if d]


def test_kubernetes_manifests_pass_the_api_schemas():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    docs = _manifests()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    # The validator is not a no-op: a misspelled field in a copy is refused.
    broken = copy.deepcopy(docs[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbee"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_manifests_refer_to_what_exists(app):
    routes = {r.rule for r in app.url_map.iter_rules()}
    docs = _manifests()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    ports = set()
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for c in d["spec"]["template"]["spec"]["containers"]:
            if "command" in c:
                _check_command([str(a) for a in c["command"]])
            _check_env(e["name"] for e in c.get("env", []))
            ports |= {p["containerPort"] for p in c.get("ports", [])}
            probe = c.get("readinessProbe")
            if probe:
                assert probe["httpGet"]["path"] in routes
                assert probe["httpGet"]["port"] == _gunicorn_port()
    assert ports == {_gunicorn_port()}
    beats = [d for d in deployments if any("beat" in c.get("command", []) for c in
                                           d["spec"]["template"]["spec"]["containers"])]
    assert len(beats) == 1 and beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"]["type"] == "Recreate"
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert any(svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments)
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
