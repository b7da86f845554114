"""Recording a conversion's accepted variants: blobs, then rows.

Only trusted code runs here: the results were produced by the sandboxed converter and
validated (re-hashed, schema-checked) by ``registry.jobs.sandbox`` before they arrive.

Variants are not published here: a converted variant is confidential (reader token) until
a release or experiment arm first makes it deliverable. Each servable row records its
planned TUF target path, which ``registry.delivery.publication`` lists at that moment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.signing import variant_target_path


def publish_variants(services, model: str, number: int, version_id: int, results: list) -> dict[str, Any]:
    from registry.convert.catalog import VARIANTS

    stored = []
    for r in results:
        if r.error is None and r.path is not None:
            info = services.blobs.put_file(Path(r.path))
            ext = VARIANTS[r.name].extension
            stored.append((r, info, variant_target_path(model, number, r.name, ext)))
    by_name = {r.name: (info, path) for r, info, path in stored}
    summary: dict[str, Any] = {}
    for r in results:
        info, path = by_name.get(r.name, (None, None))
        services.store.record_variant(
            version_id, name=r.name, format=r.format, sha256=info.sha256 if info else None,
            size=info.size if info else None, target_path=path if r.servable else None,
            fidelity=r.fidelity or {}, reference_latency_ms=r.reference_latency_ms,
            servable=bool(r.servable and info), reason=r.reason, error=r.error,
            signature=getattr(r, "signature", None) if info else None)
        summary[r.name] = {"state": "failed" if r.error else "done", "error": r.error,
                           "servable": bool(r.servable and info)}
    return summary
