"""Tokens, the audit log and signing keys: admin only."""

from __future__ import annotations

from flask import Blueprint, request

from registry.api._util import bool_arg, int_arg, json_body, respond
from registry.auth import current_actor, require_role
from registry.errors import NotFoundError, ValidationError
from registry.schemas import TokenCreate, parse_as
from registry.services import current_services

bp = Blueprint("admin", __name__)
ROTATABLE = ("root", "targets", "snapshot", "timestamp", "manifest")


@bp.post("/v1/tokens")
@require_role("admin")
def create_token():
    body = parse_as(TokenCreate, json_body())
    return respond(current_services().store.create_token(body.role, body.name, current_actor()), 201)


@bp.get("/v1/tokens")
@require_role("admin")
def list_tokens():
    return respond({"items": current_services().store.list_tokens()})


@bp.delete("/v1/tokens/<int:token_id>")
@require_role("admin")
def revoke_token(token_id: int):
    if not current_services().store.revoke_token(token_id, current_actor()):
        raise NotFoundError(f"token {token_id} does not exist")
    return respond({"revoked": token_id})


@bp.get("/v1/audit")
@require_role("admin")
def audit_log():
    limit = int_arg("limit", 100, 1, 1000)
    return respond({"items": current_services().store.audit_log(
        limit, request.args.get("action"), actor=request.args.get("actor"),
        system=bool_arg("system", True))})


@bp.post("/v1/keys/rotate")
@require_role("admin")
def rotate_key():
    body = json_body()
    unknown = sorted(set(body) - {"role"})
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; send only 'role'", field=unknown[0])
    role = body.get("role")
    if role not in ROTATABLE:
        raise ValidationError(f"role must be one of {', '.join(ROTATABLE)}", field="role")
    svc, actor = current_services(), current_actor()
    # The audit row commits in the rotation's own transaction (registry/signing, rotate_key).
    result = svc.signing.rotate_key(role, record=lambda keyid: svc.store.audit(
        actor, "keys.rotate", f"role:{role}", {"result": keyid}))
    return respond({"role": role, "result": result if isinstance(result, (dict, str)) else str(result)})
