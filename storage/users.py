"""Named users of the API and the web pages, each with a role and a token. Tokens are
random (256 bits), shown once when the user is added and stored only as their SHA-256
(a fast hash is enough for a random secret of that length: there is nothing to guess)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import Engine, func, insert, select, update

from storage.db import writing
from storage.models import ApiUser


class Role(IntEnum):
    """What a user may do; each role may do what the ones below it may."""

    VIEWER = 1  # read the worklist, studies, jobs, models, metrics
    RADIOLOGIST = 2  # and give feedback on results
    OPERATOR = 3  # and retry jobs, check destinations
    ADMIN = 4  # everything

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"role {name!r}: use viewer, radiologist, operator or admin") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class User:
    name: str
    role: Role


class UserError(ValueError):
    """A user cannot be added or revoked; the message says why."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(engine: Engine, name: str, role: Role) -> str:
    """Add ``name`` with ``role``; the new token (shown to the operator once)."""
    if not _NAME.match(name):
        raise UserError(f"user name {name!r}: letters, digits and . _ @ - (up to 64), starting with a letter "
                        "or digit")
    token = secrets.token_urlsafe(32)
    with writing(engine) as conn:
        if conn.execute(select(ApiUser.id).where(ApiUser.name == name)).first() is not None:
            raise UserError(f"user {name!r} exists; revoke it first to give it a new token")
        conn.execute(insert(ApiUser).values(name=name, role=str(role), token_sha256=token_digest(token),
                                            created_at=time.time()))
    return token


def revoke_user(engine: Engine, name: str) -> None:
    """Revoke ``name``'s token (the name can then be added again with a new one)."""
    with writing(engine) as conn:
        row = conn.execute(select(ApiUser.id).where(ApiUser.name == name, ApiUser.revoked_at.is_(None))).first()
        if row is None:
            raise UserError(f"no active user {name!r}")
        # Revoked rows keep their history under a name that frees the original.
        conn.execute(update(ApiUser).where(ApiUser.id == row[0]).values(
            revoked_at=time.time(), name=f"{name}~revoked-{row[0]}"[:64]))


def list_users(engine: Engine) -> list[tuple[str, Role, float, float | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(ApiUser.name, ApiUser.role, ApiUser.created_at, ApiUser.revoked_at)
                            .order_by(ApiUser.id)).all()
    return [(name.split("~revoked-")[0], Role.named(role), created, revoked) for name, role, created, revoked in rows]


def users_exist(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(ApiUser)
                                 .where(ApiUser.revoked_at.is_(None))).scalar())


def user_for_token(engine: Engine, token: str) -> User | None:
    """The active user whose token this is, or None."""
    digest = token_digest(token)
    with engine.connect() as conn:
        row = conn.execute(select(ApiUser.name, ApiUser.role, ApiUser.token_sha256).where(
            ApiUser.token_sha256 == digest, ApiUser.revoked_at.is_(None))).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return User(row.name, Role.named(row.role))
