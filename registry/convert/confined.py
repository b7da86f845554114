"""The untrusted side of a conversion job: runs inside the sandbox, never in the worker.

``python -m registry.convert.boot <limits> registry.convert.confined <input-dir> <work-dir>``
reads ``<input-dir>/request.json`` (written by the trusted worker), converts the upload
found next to it, and writes candidate artifacts under ``<work-dir>/out/variants/`` and a
``<work-dir>/result.json`` describing them. Progress goes to the worker as JSON lines.

Nothing here is believed by the worker: it re-hashes every artifact and validates the
result document (``registry.jobs.results``) before storing or signing anything. So this
module may be as simple as the converter needs; it must only never *need* a secret.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from registry.convert.boot import progress

RESULT_NAME = "result.json"
REQUEST_NAME = "request.json"
OUT_DIR = "out"


def _result_document(results) -> dict:
    out = []
    for r in results:
        out.append({
            "name": r.name,
            "format": r.format,
            "file": f"{OUT_DIR}/variants/{Path(r.path).name}" if r.path is not None and r.error is None else None,
            "size": r.size,
            "sha256": r.sha256,
            "fidelity": r.fidelity or {},
            "reference_latency_ms": r.reference_latency_ms,
            "servable": bool(r.servable),
            "reason": r.reason,
            "error": r.error,
            "signature": r.signature,
        })
    return {"error": None, "variants": out}


def _write_result(work: Path, document: dict) -> None:
    tmp = work / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, work / RESULT_NAME)


def main(input_dir: Path, work: Path) -> int:
    request = json.loads((input_dir / REQUEST_NAME).read_text())
    from registry.convert import ConversionError, convert_version

    def report(done: int, total: int, name: str) -> None:
        progress({"done": done, "total": total, "variant": name})

    eval_name = request.get("eval")
    try:
        results = convert_version(
            input_dir / request["source"], work / OUT_DIR,
            variants=request["variants"],
            eval_path=input_dir / eval_name if eval_name else None,
            accuracy_drop_threshold_pp=float(request["threshold_pp"]),
            latency_runs=int(request["latency_runs"]),
            max_parallel=request.get("max_parallel") or None,
            progress=report,
            max_extract_bytes=int(request["max_extract_bytes"]),
            check_ops=bool(request.get("check_ops", True)),
            declared=request.get("declared") or None,
            max_relative_rmse=float(request.get("max_relative_rmse", 0.05)),
            attached=[(str(a["variant"]), input_dir / Path(str(a["file"])).name)
                      for a in request.get("attached") or []],
        )
    except ConversionError as e:
        _write_result(work, {"error": str(e), "code": getattr(e, "code", "conversion_failed"),
                             "variants": []})
        return 0
    except MemoryError:
        _write_result(work, {"error": "the converter ran out of memory (MODELDROP_CONVERT_MEMORY_BYTES)",
                             "code": "resource_limit", "variants": []})
        return 0
    except Exception as e:  # noqa: BLE001 - reported as the job's error, scrubbed by the worker
        traceback.print_exc()
        _write_result(work, {"error": f"{type(e).__name__}: {e}", "code": "conversion_failed",
                             "variants": []})
        return 0
    _write_result(work, _result_document(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
