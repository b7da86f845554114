"""Models and versions."""

from __future__ import annotations

from flask import Blueprint, request, url_for

from registry.api._util import INT64_MAX, artifact_url, cursor_arg, dump, int_arg, json_body, respond
from registry.auth import current_actor, require_role
from registry.errors import ValidationError
from registry.schemas import validate_name
from registry.services import current_services
from registry.upload_service import publish_upload, retry_conversion, update_metadata, update_model

bp = Blueprint("models", __name__)


def _version_json(version) -> dict:
    body = dump(version)
    for v in body["variants"]:
        v["url"] = artifact_url(v["sha256"], public=v["public"]) if v.get("sha256") else None
    body["source"]["url"] = artifact_url(version.source["sha256"], public=False)
    return body


@bp.get("/v1/models")
@require_role("reader")
def list_models():
    return respond({"items": current_services().store.list_models()})


@bp.get("/v1/models/<name>")
@require_role("reader")
def get_model(name: str):
    return respond(current_services().store.get_model(validate_name(name)))


@bp.patch("/v1/models/<name>")
@require_role("publisher")
def patch_model(name: str):
    return respond(update_model(current_services(), validate_name(name), json_body(), current_actor()))


@bp.post("/v1/models/<name>/versions")
@require_role("publisher")
def create_version(name: str):
    validate_name(name)
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise ValidationError("upload the model as multipart/form-data with a 'file' part",
                              field="file")
    number = request.form.get("version")
    if number is not None:
        if not (number.isascii() and number.isdigit() and 1 <= int(number[:20]) <= INT64_MAX):
            raise ValidationError("'version' must be a positive integer", field="version")
        number = int(number)
    version, created, job_id = publish_upload(
        current_services(), name, file_part=request.files.get("file"), eval_part=request.files.get("eval"),
        metadata_raw=request.form.get("metadata"), number=number, actor=current_actor(),
        artifact_parts=request.files.getlist("artifact"))
    body = _version_json(version)
    body["job"] = job_id
    location = url_for("models.get_version", name=name, number=version.version)
    return respond(body, 201 if created else 200, Location=location)


@bp.get("/v1/models/<name>/versions")
@require_role("reader")
def list_versions(name: str):
    limit = int_arg("limit", 20, 1, 200)
    before = cursor_arg()
    page, nxt = current_services().store.list_versions(validate_name(name), limit=limit, before=before)
    return respond({"items": [_version_json(v) for v in page],
                    "next_cursor": str(nxt) if nxt is not None else None})


@bp.get("/v1/models/<name>/versions/<int:number>")
@require_role("reader")
def get_version(name: str, number: int):
    return respond(_version_json(current_services().store.get_version(validate_name(name), number)))


@bp.patch("/v1/models/<name>/versions/<int:number>")
@require_role("publisher")
def patch_version(name: str, number: int):
    version = update_metadata(current_services(), validate_name(name), number, json_body(), current_actor())
    return respond(_version_json(version))


@bp.post("/v1/models/<name>/versions/<int:number>/retry")
@require_role("publisher")
def retry_version(name: str, number: int):
    """Re-run a failed conversion; optional multipart ``eval`` / ``metadata`` / ``reason``."""
    form = request.form if (request.mimetype or "").startswith(("multipart/form-data",
                                                                "application/x-www-form-urlencoded")) else {}
    version, job_id = retry_conversion(
        current_services(), validate_name(name), number, actor=current_actor(),
        eval_part=request.files.get("eval"), metadata_raw=form.get("metadata"),
        reason=form.get("reason") or "")
    body = _version_json(version)
    body["job"] = job_id
    return respond(body, 202, Location=url_for("models.get_job", job_id=job_id))


@bp.get("/v1/jobs/<job_id>")
@require_role("reader")
def get_job(job_id: str):
    return respond(current_services().store.get_job(job_id))
