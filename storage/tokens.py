"""Storage adapter for the REST API's tokens: created once and shown once, kept as sha256 digests, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from core.errors import InvalidInput, NotFound, StorageError
from storage.tables import ApiTokenRow

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
api_tokens = ApiTokenRow.metadata.tables["api_tokens"]
TOKEN_PREFIX = "tbk_"  # recognisable in logs and by secret scanners


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored token, without its secret (which exists only in the answer to ``create``)."""

    id: int
    name: str
    scope: Scope
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        """A write token may also read; a read token only reads."""
        return self.scope == "write" or scope == "read"


def digest(secret: str) -> str:
    """sha256 of the secret: enough for 256 random bits (no salt or slow hash needed; nothing to brute-force)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class TokenStore:
    """API tokens on SQLite or PostgreSQL; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str, scope: Scope = "read", *, now: datetime | None = None) -> tuple[ApiToken, str]:
        """A new token and its secret; the secret is not stored and cannot be shown again."""
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidInput("a token needs a name of 1 to 100 characters")
        if scope not in SCOPES:
            raise InvalidInput(f"unknown scope {scope!r}; choose one of: read, write")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
        created_at = now or datetime.now(UTC)
        prefix = secret[: len(TOKEN_PREFIX) + 6]
        table = api_tokens
        values = {"name": name, "scope": scope, "digest": digest(secret), "prefix": prefix, "created_at": created_at}
        try:
            with self.engine.begin() as conn:
                token_id = conn.execute(table.insert().returning(table.c.id), values).scalar_one()
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc}") from exc
        return ApiToken(token_id, name, scope, prefix, created_at), secret

    def authenticate(self, secret: str) -> ApiToken | None:
        """The active token whose secret this is, or None (unknown or revoked)."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        table = api_tokens
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(table).where(table.c.digest == digest(secret), table.c.revoked_at.is_(None))
                ).one_or_none()
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc}") from exc
        return _token(row) if row is not None else None

    def touch(self, token_id: int, *, now: datetime) -> None:
        """Record that the token was used (callers throttle this: it is a write)."""
        table = api_tokens
        try:
            with self.engine.begin() as conn:
                conn.execute(update(table).where(table.c.id == token_id).values(last_used_at=now))
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc}") from exc

    def list(self, *, include_revoked: bool = True) -> list[ApiToken]:
        table = api_tokens
        stmt = select(table).order_by(table.c.id)
        if not include_revoked:
            stmt = stmt.where(table.c.revoked_at.is_(None))
        try:
            with self.engine.connect() as conn:
                return [_token(r) for r in conn.execute(stmt).all()]
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc}") from exc

    def revoke(self, token: str, *, now: datetime | None = None) -> ApiToken:
        """Revoke by id or by name (a name must be unambiguous among active tokens). Raises NotFound, InvalidInput."""
        table = api_tokens
        now = now or datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                if token.isdigit():
                    rows = conn.execute(select(table).where(table.c.id == int(token))).all()
                else:
                    rows = conn.execute(
                        select(table).where(table.c.name == token.strip(), table.c.revoked_at.is_(None))
                    ).all()
                if not rows:
                    raise NotFound(f"no active API token {token!r}")
                if len(rows) > 1:
                    raise InvalidInput(f"{len(rows)} active tokens are named {token!r}; revoke one by id")
                found = _token(rows[0])
                if found.revoked_at is None:
                    conn.execute(update(table).where(table.c.id == found.id).values(revoked_at=now))
                    found = replace(found, revoked_at=now)
                return found
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc}") from exc


def _token(row: Any) -> ApiToken:
    """An ApiToken from a Core row of api_tokens."""
    return ApiToken(
        id=row.id,
        name=row.name,
        scope=row.scope,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
