"""Publication: when a variant stops being confidential.

A team's trained model is its IP, so uploads are not published: a source is never a TUF
target, and a converted variant is stored and recorded (with its planned target path) but
stays confidential — downloadable only with a reader token — until a release or an
experiment arm first makes it deliverable. Then, and before that release or experiment is
written (so no manifest can name a target a device cannot verify):

1. its TUF target is added to the signed targets metadata (same ``custom`` fields the job
   runner used to publish: model, version, variant, format, ``kind="variant"``);
2. its row is marked ``public`` (audited as ``variant.publish``), which lets the artifact
   route serve it without a token and the manifest offer it.

Public is never undone: devices may hold the artifact, and a rollback needs it. A delta
patch is published only when both of its ends are public (``registry.delivery.deltas``).
Whether a sha256 is public is decided per blob: identical bytes shared by several variants
are public as soon as one of them is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["publish_deliverable"]


def publish_deliverable(services: Any, model: str,
                        deliverables: Iterable[tuple[int, str | None]],
                        actor: str) -> list[str]:
    """Make public what a release or experiment is about to deliver.

    Args:
        deliverables: ``(version, pinned variant or None)`` pairs; ``None`` means every
            servable variant of the version (the manifest picks one per device).
        actor: Recorded in the audit log.

    Returns:
        The target paths newly published (empty when everything was public already).

    Raises:
        SigningError: the targets could not be signed; nothing was marked public.
    """
    pending: dict[int, dict[str, Any]] = {}  # version number -> variant name -> VariantOut
    for number, pinned in deliverables:
        found = services.store.get_version(model, number)
        for v in found.variants:
            if v.servable and v.sha256 and v.target_path and not v.public and \
                    (pinned is None or v.name == pinned):
                pending.setdefault(number, {})[v.name] = v
    if not pending:
        return []
    specs = [services.target_spec(v.target_path, v.sha256, v.size, model=model, version=number,
                                  variant=v.name, format=v.format, kind="variant")
             for number, variants in pending.items() for v in variants.values()]
    # Targets first: a crash after this leaves a listed target whose row is still
    # confidential, which the next release repairs (re-adding identical targets is a no-op).
    services.signing.add_targets(specs)
    for number, variants in pending.items():
        services.store.publish_variants(services.store.version_id(model, number),
                                        list(variants), actor)
    return [spec.path for spec in specs]
