"""Small helpers shared by the views: services access, JSON bodies, serialisation."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request, url_for
from pydantic import BaseModel

from registry.errors import ValidationError
from registry.services import current_services


def json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object", field="body")
    return data


def dump(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (list, tuple)):
        return [dump(o) for o in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def respond(obj: Any, status: int = 200, **headers: str):  # noqa: ANN201
    resp = jsonify(dump(obj))
    resp.status_code = status
    resp.headers.update(headers)
    return resp


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ValidationError(f"query parameter {name!r} must be an integer", field=name) from e
    if not lo <= value <= hi:
        raise ValidationError(f"query parameter {name!r} must be between {lo} and {hi}", field=name)
    return value


def bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("1", "true", "0", "false"):
        raise ValidationError(f"query parameter {name!r} must be true or false", field=name)
    return value in ("1", "true")


def artifact_url(sha256: str, public: bool = True) -> str:
    """Download URL of an artifact; a confidential one (``public`` false) never names the CDN:
    it needs the reader's token, which a shared cache must not see or answer for."""
    settings = current_services().settings
    base = (settings.cdn_base_url if public else None) or settings.public_base_url
    if base:
        return f"{base.rstrip('/')}/v1/artifacts/{sha256}"
    return url_for("artifacts.get_artifact", sha256=sha256, _external=True)
