"""Users, API tokens and roles: viewer (read), operator (+ set desired values), admin (+ everything)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.errors import AuthError, ConfigError
from gateway.store import Store

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
TOKEN_PREFIX = "fgt_"
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user name or `token:<id>`, and the role."""

    name: str
    role: Role

    def can(self, needed: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    return role


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough; passwords get argon2.
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(store: Store, role: str, description: str = "") -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.users.add_token(hash_token(token), check_role(role), description)
    return token


async def authenticate_token(store: Store, token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise AuthError("invalid token")
    found = await store.users.token_role(hash_token(token))
    if found is None:
        raise AuthError("invalid token")
    token_id, role = found
    return Principal(f"token:{token_id}", check_role(role))


async def add_user(store: Store, name: str, role: str, password: str) -> None:
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise ConfigError("password: use at least 8 characters")
    await store.users.put(name, check_role(role), _hasher.hash(password))


async def authenticate_user(store: Store, name: str, password: str) -> Principal:
    found = await store.users.get(name)
    if found is None:
        _hasher.hash(password)  # same work as a real check: no user enumeration by timing
        raise AuthError("invalid user name or password")
    role, password_hash = found
    try:
        _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        raise AuthError("invalid user name or password") from None
    return Principal(name, check_role(role))
