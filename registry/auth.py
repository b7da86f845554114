"""Bearer API tokens with roles. Roles are ordered: admin > publisher > reader."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import g, request

from registry.errors import AuthenticationError, PermissionDeniedError
from registry.services import current_services

ROLE_RANK = {"reader": 1, "publisher": 2, "admin": 3}
F = TypeVar("F", bound=Callable)


def current_actor() -> str:
    return getattr(g, "actor", "anonymous")


def bearer_token() -> str | None:
    """The token of the request's ``Authorization: Bearer <token>`` header, if it sent one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(required: str) -> str:
    """Checks the request's bearer token has at least ``required``; returns the actor."""
    token = bearer_token()
    if token is None:
        raise AuthenticationError("send an API token: 'Authorization: Bearer <token>'")
    found = current_services().store.token_role(token)
    if found is None:
        raise AuthenticationError("the API token is unknown or revoked")
    actor, role = found
    if ROLE_RANK[role] < ROLE_RANK[required]:
        raise PermissionDeniedError(f"this action needs the {required!r} role; the token has {role!r}",
                                    required_role=required, role=role)
    g.actor, g.role = actor, role
    return actor


def require_role(role: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args, **kwargs):
            authenticate(role)
            return view(*args, **kwargs)

        wrapper.required_role = role  # read by the OpenAPI document
        return wrapper  # type: ignore[return-value]

    return decorator
