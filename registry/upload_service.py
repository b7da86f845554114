"""Upload service: a streamed upload becomes a version and a conversion job.

The source is a team's IP: it is stored and recorded but never a TUF target, and the
artifact route serves it only with a reader token (docs/security.md, "Confidential
sources and unreleased variants").
"""

from __future__ import annotations

from typing import Any

from registry.convert.catalog import ATTACHED_VARIANT, PROVIDED_VARIANT
from registry.errors import (
    InvalidMetadataError,
    UnsupportedFormatError,
    UploadTooLargeError,
    ValidationError,
    VersionFailedError,
)
from registry.schemas import VersionOut, validate_name
from registry.upload_stream import (
    SOURCE_EXTENSIONS,
    check_container,
    parse_metadata,
    source_format,
    take_spool,
)

ATTACHMENT_FIELD = "artifact"


def _take_eval(services, eval_part, metadata: dict[str, Any] | None):
    """The uploaded eval set's spool (None when none was sent), refused past the size limit
    or when it does not fit the metadata's declared inputs (``registry.evalcheck``): still
    in staging then, so the request's teardown removes it and nothing is stored."""
    from registry.evalcheck import check_eval_set

    if eval_part is None or not getattr(eval_part, "filename", None):
        return None
    spool = take_spool(eval_part, "eval")
    limit = services.settings.max_eval_bytes
    if spool.size > limit:
        raise UploadTooLargeError(f"the eval set is larger than the limit of {limit} bytes",
                                  field="eval", limit=limit)
    check_eval_set(spool.path, metadata)
    return spool


def _attachment_format(filename: str) -> str:
    """``tflite`` / ``mlpackage`` / ``mlmodel`` for an attached file's name, else a 400."""
    lower = (filename or "").lower()
    for ext, fmt in SOURCE_EXTENSIONS.items():
        if lower.endswith(ext):
            if fmt in ATTACHED_VARIANT:
                return fmt
            break
    raise UnsupportedFormatError(
        f"the attached artifact {filename!r} is not your own conversion: attach a .tflite, a zipped "
        ".mlpackage (.mlpackage.zip) or an .mlmodel", field=ATTACHMENT_FIELD)


def _take_attachments(services, parts, source_fmt: str, source_name: str) -> list[tuple[Any, dict]]:
    """The ``artifact`` parts as (spool, attachment) pairs, each header-checked exactly as a
    provided upload (``check_container``) plus its declared expanded size, at most one per
    format; any refusal is a 400 naming the part, while every spool is still in staging
    (the request's teardown removes them: nothing is stored)."""
    parts = [p for p in parts or [] if p is not None and getattr(p, "filename", None)]
    if not parts:
        return []
    if source_fmt in PROVIDED_VARIANT:
        raise ValidationError(
            f"{source_name!r} is itself your own conversion: artifacts are attached to a source model "
            "(.keras, .h5, SavedModel .zip, .pt2, .pt) whose conversion they join", field=ATTACHMENT_FIELD)
    from registry.jobs.conversion import extract_budget

    taken: list[tuple[Any, dict]] = []
    for part in parts:
        fmt = _attachment_format(part.filename)
        variant = ATTACHED_VARIANT[fmt]
        if any(a["variant"] == variant for _, a in taken):
            raise ValidationError(
                f"two attached artifacts would both be variant {variant!r} ({part.filename!r} and an earlier "
                "part): attach at most one file per format", field=ATTACHMENT_FIELD)
        spool = take_spool(part, ATTACHMENT_FIELD)
        check_container(fmt, spool.path, part.filename, field=ATTACHMENT_FIELD,
                        max_expanded=extract_budget(services.settings, spool.size))
        taken.append((spool, {"variant": variant, "format": fmt, "sha256": spool.sha256,
                              "size": spool.size, "filename": part.filename[:255]}))
    return taken


def publish_upload(services, name: str, *, file_part, eval_part, metadata_raw: str | None,
                   number: int | None, actor: str, artifact_parts=()) -> tuple[VersionOut, bool, str | None]:
    """Returns (version, created, job id). Bad input raises before anything is stored.

    ``artifact_parts``: the engineer's own converted files attached to the source (each becomes
    the variant ``ATTACHED_VARIANT[format]``, served as those exact bytes)."""
    validate_name(name)
    metadata = parse_metadata(metadata_raw)
    spool = take_spool(file_part, "file")
    fmt = source_format(file_part.filename)
    from registry.jobs.conversion import extract_budget

    # a zipped package declaring more than the sandbox may extract is a bomb: refused here,
    # from its central directory, as for an attachment (the sandbox checks real sizes again)
    check_container(fmt, spool.path, file_part.filename,
                    max_expanded=extract_budget(services.settings, spool.size))
    if fmt in PROVIDED_VARIANT and metadata.get("variants") is not None:
        raise InvalidMetadataError(
            f"{file_part.filename!r} is your own conversion and is served as uploaded (variant "
            f"{PROVIDED_VARIANT[fmt]!r}): nothing is converted from it, so 'variants' does not apply",
            field="variants")
    attached = _take_attachments(services, artifact_parts, fmt, file_part.filename)
    eval_spool = _take_eval(services, eval_part, metadata)
    source = services.blobs.adopt_file(spool.path, spool.sha256, spool.size)
    eval_sha = None
    if eval_spool is not None:
        eval_sha = services.blobs.adopt_file(eval_spool.path, eval_spool.sha256, eval_spool.size).sha256
    attachments = []
    for attached_spool, attachment in attached:
        services.blobs.adopt_file(attached_spool.path, attached_spool.sha256, attached_spool.size)
        attachments.append(attachment)
    try:
        version, created = services.store.create_version(
            name, sha256=source.sha256, size=source.size, source_format=fmt,
            filename=file_part.filename, metadata=metadata, eval_sha256=eval_sha, actor=actor,
            number=number, attachments=attachments)
    except BaseException:
        # A 409 (or any failure) after the bytes were stored: no row will refer to them, so
        # they go too, unless another version already has the same bytes.
        for sha in {source.sha256, eval_sha, *(a["sha256"] for a in attachments)} - {None}:
            if not services.store.blob_referenced(sha):
                services.blobs.delete(sha)
        raise
    if not created and version.status == "failed":
        # Re-pushing the same bytes cannot fix a failed conversion (and would silently drop a
        # new eval set or metadata): say so and point at retry.
        raise VersionFailedError(
            f"these bytes are version {version.version} of {name!r}, whose conversion failed: "
            f"retry it with `modeldrop retry {name} {version.version} [--eval FILE] "
            f"[--metadata FILE]` (POST /v1/models/{name}/versions/{version.version}/retry)",
            model=name, version=version.version, error=version.error)
    if not created:
        return version, False, services.store.latest_job_for_version(
            services.store.version_id(name, version.version))
    version_id = services.store.version_id(name, version.version)
    job_id = services.store.create_job(version_id)
    services.jobs.enqueue(job_id)
    return services.store.get_version(name, version.version), True, job_id


def retry_conversion(services, name: str, number: int, *, actor: str, eval_part=None,
                     metadata_raw: str | None = None, reason: str = "") -> tuple[VersionOut, str]:
    """Re-run the conversion of a failed version, optionally with a new eval set and/or
    metadata (its top-level fields replace the old ones). Returns (version, new job id).

    Raises:
        VersionNotFailedError: the version is not failed, or a job for it is still pending.
    """
    import json

    validate_name(name)
    metadata = None
    if metadata_raw is not None and metadata_raw.strip():
        parsed = parse_metadata(metadata_raw)
        sent = json.loads(metadata_raw)  # parse_metadata proved it is a JSON object
        metadata = {k: v for k, v in parsed.items() if k in sent}
    eval_sha = None
    eval_spool = None
    if eval_part is not None and getattr(eval_part, "filename", None):
        # Checked against the metadata the retry will run with: the new fields over the old.
        stored = services.store.get_version(name, number).metadata
        eval_spool = _take_eval(services, eval_part, {**stored, **(metadata or {})})
    if eval_spool is not None:
        eval_sha = services.blobs.adopt_file(eval_spool.path, eval_spool.sha256, eval_spool.size).sha256
    if not isinstance(reason, str) or len(reason) > 1000:
        from registry.errors import ValidationError

        raise ValidationError("reason must be a string of at most 1000 characters", field="reason")
    job_id = services.store.retry_version(name, number, actor=actor, reason=reason,
                                          eval_sha256=eval_sha, metadata=metadata)
    services.jobs.enqueue(job_id)
    return services.store.get_version(name, number), job_id


def unlist_sources(services) -> list[str]:
    """Remove sources from TUF targets that earlier releases of ModelDrop listed there.

    Run at start (idempotent: it signs nothing when none is listed). Older targets versions
    still name them, but no route serves their bytes without a token any more.
    """
    listed = services.signing.target_paths()
    paths = [p for p in services.store.source_target_paths() if p in listed]
    if paths:
        services.signing.remove_targets(paths, missing_ok=True)
    return paths


def update_metadata(services, name: str, number: int, patch: dict[str, Any], actor: str) -> VersionOut:
    from registry.errors import InvalidMetadataError
    from registry.schemas import MetadataPatch, parse_as

    parsed = parse_as(MetadataPatch, patch, InvalidMetadataError, "metadata field")
    return services.store.update_metadata(name, number, parsed.model_dump(exclude_none=True), actor)


def update_model(services, name: str, body: dict[str, Any], actor: str):
    """Validate and apply model-wide settings (e.g. the accuracy-drop threshold for new uploads)."""
    from registry.schemas import ModelPatch, parse_as

    parsed = parse_as(ModelPatch, body)
    return services.store.update_model(name, parsed.model_dump(exclude_unset=True), actor)
