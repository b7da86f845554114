"""Publishing a conversion's accepted variants: blobs, then TUF targets, then rows.

Only trusted code runs here: the results were produced by the sandboxed converter and
validated (re-hashed, schema-checked) by ``registry.jobs.sandbox`` before they arrive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def variant_target_path(model: str, version: int, variant: str, extension: str) -> str:
    return f"{model}/{version}/{variant}.{extension}"


def publish_variants(services, model: str, number: int, version_id: int, results: list) -> dict[str, Any]:  # noqa: ANN001
    from registry.convert.catalog import VARIANTS

    stored = []
    for r in results:
        if r.error is None and r.path is not None:
            info = services.blobs.put_file(Path(r.path))
            ext = VARIANTS[r.name].extension
            stored.append((r, info, variant_target_path(model, number, r.name, ext)))
    servable = [(r, info, path) for r, info, path in stored if r.servable]
    if services.signing is not None and servable:
        services.signing.add_targets([
            services.target_spec(path, info.sha256, info.size, model=model, version=number,
                                 variant=r.name, format=r.format, kind="variant")
            for r, info, path in servable])
    by_name = {r.name: (info, path) for r, info, path in stored}
    summary: dict[str, Any] = {}
    for r in results:
        info, path = by_name.get(r.name, (None, None))
        services.store.record_variant(
            version_id, name=r.name, format=r.format, sha256=info.sha256 if info else None,
            size=info.size if info else None, target_path=path if r.servable else None,
            fidelity=r.fidelity or {}, reference_latency_ms=r.reference_latency_ms,
            servable=bool(r.servable and info), reason=r.reason, error=r.error)
        summary[r.name] = {"state": "failed" if r.error else "done", "error": r.error,
                           "servable": bool(r.servable and info)}
    return summary
