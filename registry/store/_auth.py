"""API tokens (stored as sha256 hashes) and the audit log."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, or_, select

from registry.errors import LastAdminTokenError
from registry.schemas import AuditOut, TokenOut
from registry.store._base import StoreBase
from registry.tables import AuditRow, TokenRow

TOKEN_PREFIX = "mdt_"
SYSTEM_ACTOR = "system"  # the server itself; subsystems are "system:<name>"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_out(row: TokenRow, token: str | None = None) -> TokenOut:
    return TokenOut(id=row.id, name=row.name, role=row.role, prefix=row.prefix,
                    created_at=row.created_at, created_by=row.created_by, revoked=row.revoked,
                    token=token)


class AuthStore(StoreBase):
    def create_token(self, role: str, name: str = "", created_by: str = "system") -> TokenOut:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.session() as s:
            row = TokenRow(name=name, token_hash=hash_token(token), prefix=token[:10], role=role,
                           created_by=created_by)
            s.add(row)
            s.flush()
            _audit(s, created_by, "token.create", f"token:{row.id}", {"role": role, "name": name})
            return _token_out(row, token)

    def token_role(self, token: str) -> tuple[str, str] | None:
        """Returns (actor, role) for a valid, unrevoked token."""
        with self.session() as s:
            row = s.exec(select(TokenRow).where(TokenRow.token_hash == hash_token(token))).first()
            if row is None or row.revoked:
                return None
            return (f"token:{row.id}" + (f"({row.name})" if row.name else ""), row.role)

    def list_tokens(self) -> list[TokenOut]:
        with self.session() as s:
            return [_token_out(r) for r in s.exec(select(TokenRow).order_by(TokenRow.id))]

    def revoke_token(self, token_id: int, actor: str) -> bool:
        """Revoke a token; False if there is no such token.

        Raises:
            LastAdminTokenError: it is the last unrevoked admin token (nobody could then
                administer the server over HTTP; `modeldrop token create --data-dir` is the
                offline way back, not a reason to allow this).
        """
        with self.session() as s:
            # Take the write lock first (a no-op UPDATE; SELECT ... FOR UPDATE locks nothing
            # on SQLite) so two revocations of the last two admin tokens cannot both pass.
            s.exec(update(TokenRow).where(TokenRow.id == token_id).values(revoked=TokenRow.revoked))
            row = s.get(TokenRow, token_id)
            if row is None:
                return False
            if row.role == "admin" and not row.revoked:
                # FOR UPDATE (PostgreSQL) locks the admin rows themselves.
                others = [i for i in s.exec(select(TokenRow.id).where(
                    TokenRow.role == "admin", TokenRow.revoked == False)  # noqa: E712 - SQL
                    .with_for_update()).all() if i != token_id]
                if not others:
                    raise LastAdminTokenError(
                        f"token {token_id} is the last admin token; create another admin token "
                        "first (modeldrop token create --role admin)", token=token_id)
            row.revoked = True
            _audit(s, actor, "token.revoke", f"token:{token_id}", {})
            return True

    def has_tokens(self) -> bool:
        with self.session() as s:
            return s.exec(select(TokenRow.id).limit(1)).first() is not None

    def audit(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            _audit(s, actor, action, target, details or {})

    def audit_log(self, limit: int = 100, action: str | None = None, actor: str | None = None,
                  system: bool = True) -> list[AuditOut]:
        """Newest first; ``actor`` is an actor string, a token's name or ``token:<id>``;
        ``system=False`` leaves out the server's own rows (actor ``system`` or
        ``system:*``: deltas, variant publication, guardrail halts), which outnumber people's."""
        with self.session() as s:
            q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if action:
                q = q.where(AuditRow.action == action)
            if actor:
                # People act through tokens, recorded as "token:<id>(<name>)": the token's
                # name or "token:<id>" finds them as well as the exact actor string.
                like = actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                q = q.where(or_(AuditRow.actor == actor,
                                AuditRow.actor.like(f"token:%({like})", escape="\\"),
                                AuditRow.actor.like(f"{like}(%", escape="\\")))
            if not system:
                q = q.where(AuditRow.actor != SYSTEM_ACTOR,
                            AuditRow.actor.not_like(f"{SYSTEM_ACTOR}:%"))
            return [AuditOut(**r.model_dump()) for r in s.exec(q)]


def _audit(session: Session, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
    """Audit rows are written in the same transaction as the change they describe."""
    session.add(AuditRow(actor=actor, action=action, target=target, details=details))
