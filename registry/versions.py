"""Upload service: a streamed upload becomes a version and a conversion job.

The source is a team's IP: it is stored and recorded but never a TUF target, and the
artifact route serves it only with a reader token (docs/security.md, "Confidential
sources and unreleased variants").
"""

from __future__ import annotations

from typing import Any

from registry.errors import UploadTooLargeError
from registry.schemas import VersionOut
from registry.uploads import parse_metadata, source_format, take_spool, validate_name


def publish_upload(services, name: str, *, file_part, eval_part, metadata_raw: str | None,
                   number: int | None, actor: str) -> tuple[VersionOut, bool, str | None]:  # noqa: ANN001
    """Returns (version, created, job id). Bad input raises before anything is stored."""
    validate_name(name)
    metadata = parse_metadata(metadata_raw)
    spool = take_spool(file_part, "file")
    fmt = source_format(file_part.filename)
    eval_spool = None
    if eval_part is not None and getattr(eval_part, "filename", None):
        eval_spool = take_spool(eval_part, "eval")
        limit = services.settings.max_eval_bytes
        if eval_spool.size > limit:
            raise UploadTooLargeError(f"the eval set is larger than the limit of {limit} bytes",
                                      field="eval", limit=limit)
    source = services.blobs.adopt_file(spool.path, spool.sha256, spool.size)
    eval_sha = None
    if eval_spool is not None:
        eval_sha = services.blobs.adopt_file(eval_spool.path, eval_spool.sha256, eval_spool.size).sha256
    try:
        version, created = services.store.create_version(
            name, sha256=source.sha256, size=source.size, source_format=fmt,
            filename=file_part.filename, metadata=metadata, eval_sha256=eval_sha, actor=actor,
            number=number)
    except BaseException:
        # A 409 (or any failure) after the bytes were stored: no row will refer to them, so
        # they go too, unless another version already has the same bytes.
        for sha in {source.sha256, eval_sha} - {None}:
            if not services.store.blob_referenced(sha):
                services.blobs.delete(sha)
        raise
    if not created:
        return version, False, services.store.latest_job_for_version(
            services.store.version_id(name, version.version))
    version_id = services.store.version_id(name, version.version)
    job_id = services.store.create_job(version_id)
    services.jobs.enqueue(job_id)
    return services.store.get_version(name, version.version), True, job_id


def unlist_sources(services) -> list[str]:  # noqa: ANN001
    """Remove sources from TUF targets that earlier releases of ModelDrop listed there.

    Run at start (idempotent: it signs nothing when none is listed). Older targets versions
    still name them, but no route serves their bytes without a token any more.
    """
    listed = services.signing.target_paths()
    paths = [p for p in services.store.source_target_paths() if p in listed]
    if paths:
        services.signing.remove_targets(paths, missing_ok=True)
    return paths


def update_metadata(services, name: str, number: int, patch: dict[str, Any], actor: str) -> VersionOut:  # noqa: ANN001
    from registry.errors import InvalidMetadataError
    from registry.schemas import MetadataPatch, parse_as

    parsed = parse_as(MetadataPatch, patch, InvalidMetadataError, "metadata field")
    return services.store.update_metadata(name, number, parsed.model_dump(exclude_none=True), actor)


def update_model(services, name: str, body: dict[str, Any], actor: str):  # noqa: ANN001, ANN201
    """Validate and apply model-wide settings (e.g. the accuracy-drop threshold for new uploads)."""
    from registry.schemas import ModelPatch, parse_as

    parsed = parse_as(ModelPatch, body)
    return services.store.update_model(name, parsed.model_dump(exclude_unset=True), actor)
