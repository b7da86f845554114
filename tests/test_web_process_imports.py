"""The web process never imports TensorFlow or coremltools (memory, start-up time)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_web_app_does_not_import_tensorflow_or_coremltools(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from registry.app import create_app
        app = create_app({{"data_dir": {str(tmp_path / 'data')!r}}})
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("tensorflow", "coremltools", "keras", "ai_edge_litert", "torch",
                                                  "litert_torch", "ai_edge_quantizer"))
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"web process imported: {out.stdout.strip()}"


def test_a_web_process_answering_manifests_holds_no_statistics_or_chart_libraries(tmp_path):
    # numpy, scipy, matplotlib and PIL are ~100 MB resident: they load on a report's first use
    # (registry/reports/__init__.py), never for manifests, rulesets or artifacts.
    code = textwrap.dedent(f"""
        import sys
        from registry.app import create_app
        from registry.delivery import releases
        from tests.makers import make_ready_version
        app = create_app({{"data_dir": {str(tmp_path / 'data')!r}}})
        services = app.extensions["modeldrop"]
        make_ready_version(services, "digits")
        releases.promote(services, "digits", 1, channel="production", actor="tests")
        client = app.test_client()
        resp = client.get("/v1/manifest", query_string={{"model": "digits", "platform": "android",
                                                          "install_id": "device-0001-abcd"}})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        sha = resp.get_json()["artifact"]["sha256"]
        assert client.get(f"/v1/artifacts/{{sha}}").status_code == 200
        assert client.get("/v1/rulesets/digits/production").status_code == 200
        heavy = ("numpy", "scipy", "matplotlib", "PIL")
        print("BEFORE:" + ",".join(sorted(m for m in heavy if m in sys.modules)))
        from registry.reports import build_report, render_charts  # the lazy names still resolve
        assert callable(build_report) and callable(render_charts)
        print("AFTER:" + ",".join(sorted(m for m in heavy if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if line.startswith(("BEFORE:", "AFTER:")))
    before, after = lines["BEFORE"], lines["AFTER"]
    assert before == "", f"answering manifests loaded: {before}"
    assert after == "PIL,matplotlib,numpy,scipy"
