"""Users: password hashes, roots, permissions, quotas and usage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wsfront.catalog._db import Tx
from wsfront.catalog._namespace import makedirs
from wsfront.catalog.errors import AuthFailed, Exists, InvalidName, NotFound
from wsfront.catalog.names import check_name, join_path, split_path
from wsfront.catalog.passwords import dummy_hash, hash_password, verify_password
from wsfront.catalog.records import PERMISSIONS, Login, User


def _permissions(permissions: Iterable[str] | None) -> list[str]:
    chosen = sorted(PERMISSIONS if permissions is None else set(permissions))
    unknown = set(chosen) - PERMISSIONS
    if unknown:
        raise ValueError(f"unknown permissions {sorted(unknown)}")
    return chosen


def user_from_row(row: Any) -> User:
    return User(
        name=row["name"],
        admin=bool(row["admin"]),
        root=row["root"],
        permissions=frozenset(json.loads(row["permissions"])),
        quota_bytes=row["quota_bytes"],
        quota_files=row["quota_files"],
        used_bytes=row["used_bytes"],
        used_files=row["used_files"],
        created_at=row["created_at"],
    )


def get_user(tx: Tx, name: str) -> User:
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    if row is None:
        raise NotFound(f"no user {name!r}")
    return user_from_row(row)


#: Names FTP and HTTP give anonymous clients: an account under one of them
#: would share their session budget and their view.
RESERVED_NAMES = frozenset({"anonymous", "ftp"})


def add_user(
    tx: Tx,
    now: float,
    name: str,
    password_hash: str,
    admin: bool,
    root: str | None,
    permissions: Iterable[str] | None,
    quota_bytes: int | None,
    quota_files: int | None,
) -> User:
    check_name(name)
    if name == "-":
        raise InvalidName("the user name '-' is reserved")
    if name.lower() in RESERVED_NAMES:
        raise InvalidName(f"the user name {name!r} is reserved for anonymous access (FTP and HTTP)")
    root_parts = split_path(root) if root is not None else (name,)
    tx.lock_rows("users", "name", [name])
    if tx.one("SELECT name FROM users WHERE name = ?", name) is not None:
        raise Exists(f"user {name!r} exists")
    makedirs(tx, root_parts, now)
    tx.execute(
        "INSERT INTO users (name, admin, root, permissions, quota_bytes, quota_files, "
        "used_bytes, used_files, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
        name,
        1 if admin else 0,
        join_path(root_parts),
        json.dumps(_permissions(permissions)),
        quota_bytes,
        quota_files,
        password_hash,
        now,
    )
    return get_user(tx, name)


def list_users(tx: Tx) -> list[User]:
    return [user_from_row(r) for r in tx.all("SELECT * FROM users ORDER BY name")]


def delete_user(tx: Tx, name: str) -> None:
    if not tx.execute("DELETE FROM users WHERE name = ?", name):
        raise NotFound(f"no user {name!r}")


def set_password_hash(tx: Tx, name: str, password_hash: str) -> None:
    if not tx.execute("UPDATE users SET password_hash = ? WHERE name = ?", password_hash, name):
        raise NotFound(f"no user {name!r}")


def set_quota(tx: Tx, name: str, quota_bytes: int | None, quota_files: int | None) -> User:
    if not tx.execute(
        "UPDATE users SET quota_bytes = ?, quota_files = ? WHERE name = ?",
        quota_bytes,
        quota_files,
        name,
    ):
        raise NotFound(f"no user {name!r}")
    return get_user(tx, name)


def set_permissions(tx: Tx, name: str, permissions: Iterable[str]) -> User:
    chosen = json.dumps(_permissions(permissions))
    if not tx.execute("UPDATE users SET permissions = ? WHERE name = ?", chosen, name):
        raise NotFound(f"no user {name!r}")
    return get_user(tx, name)


def get_login(tx: Tx, name: str) -> Login:
    """The user and their stored password hash in one read, no scrypt."""
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    if row is None:
        raise NotFound(f"no user {name!r}")
    return Login(user_from_row(row), row["password_hash"])


def check_login(tx: Tx, name: str, password: str) -> Login:
    """Runs the scrypt check inside the worker thread; the same work is done
    for unknown users.  The Login carries the hash the password was verified
    against, read in the same statement as the user."""
    row = tx.one("SELECT * FROM users WHERE name = ?", name)
    stored = row["password_hash"] if row is not None else dummy_hash()
    if not verify_password(password, stored) or row is None:
        raise AuthFailed("unknown user or wrong password")
    return Login(user_from_row(row), stored)


def authenticate(tx: Tx, name: str, password: str) -> User:
    return check_login(tx, name, password).user


__all__ = ["add_user", "authenticate", "check_login", "get_login", "hash_password"]
