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
