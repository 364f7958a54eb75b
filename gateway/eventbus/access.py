"""Who may use the embedded broker and for what: the gateway's own credentials, and mosquitto's password and ACL
files made from the `eventbus` users and rules (checked by gateway.resources.eventbus_checks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.resources.eventbus_checks import (
    GATEWAY_USER,
    user_password,
)
from gateway.resources.schema import EventbusSettings, Secret, TopicAccess

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 uses for its `$7$` hashes


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(GATEWAY_USER, secrets.token_urlsafe(24))

    def write(self, path: Path) -> None:
        """Kept (mode 0600) so that the node's administrator can watch the broker as the gateway does."""
        write_private(path, json.dumps({"username": self.username, "password": self.password}) + "\n")


@dataclass(frozen=True)
class BrokerAccess:
    """The embedded broker's users (passwords in clear, the gateway's included) and its rules."""

    allow_anonymous: bool
    passwords: dict[str, str]
    acl: str | None  # mosquitto's acl_file; None: every client may do everything (no rules were given)


# --- what the broker is given ---------------------------------------------------------------------------------


def broker_access(settings: EventbusSettings, namespace: str, secret_docs: Mapping[tuple[str, str], Secret],
                  gateway: Credentials, more_topics: Iterable[str] = ()) -> BrokerAccess:
    """The embedded broker's users and rules for these settings; `more_topics` are topics the gateway serves beside
    the twin topics (routes from the eventbus), so that its full access covers their `$` trees too."""
    passwords = {gateway.username: gateway.password}
    for user in settings.users:
        passwords[user.name] = user_password(user, namespace, secret_docs)
    allow_anonymous = settings.allow_anonymous if settings.allow_anonymous is not None else not settings.users
    if not settings.users and settings.anonymous_acl is None:
        return BrokerAccess(allow_anonymous, passwords, None)
    everything = _full_access([*more_topics, *(r.topic for u in settings.users for r in u.acl),
                               *(r.topic for r in settings.anonymous_acl or [])])
    lines = ["# Made by fieldgate from the Gateway document's eventbus settings at every start: do not edit.", ""]
    if allow_anonymous:  # the rules before any `user` line are the anonymous clients'
        lines += _rule_lines(settings.anonymous_acl if settings.anonymous_acl is not None else everything)
        lines.append("")
    lines += [f"user {gateway.username}", *_rule_lines(everything), ""]
    for user in settings.users:
        lines += [f"user {user.name}", *_rule_lines(user.acl), ""]
    return BrokerAccess(allow_anonymous, passwords, "\n".join(lines))


def _full_access(topics: Iterable[str]) -> list[TopicAccess]:
    """`#`, and the `$` trees (which `#` does not match) of the twin topics and of every topic named."""
    roots = {"$hw"} | {topic.split("/", 1)[0] for topic in topics if topic.startswith("$")}
    return [TopicAccess(topic="#", access="readwrite"),
            *(TopicAccess(topic=f"{root}/#", access="readwrite") for root in sorted(roots))]


def _rule_lines(rules: Iterable[TopicAccess]) -> list[str]:
    return [f"topic {rule.access} {rule.topic}" for rule in rules]


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto's `$7$` password hash: PBKDF2-HMAC-SHA512 with a 12-byte salt, both base64-encoded."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def find_mosquitto_passwd() -> str | None:
    return shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd") if Path(p).exists()), None)


async def write_password_file(path: Path, passwords: Mapping[str, str], *, tool: str | None = None) -> None:
    """mosquitto's password_file (mode 0600): hashed by `tool` (mosquitto_passwd) when given, else here."""
    if tool is None:
        write_private(path, "".join(f"{name}:{hash_password(password)}\n" for name, password in passwords.items()))
        return
    hashed = path.with_name(path.name + ".new")
    write_private(hashed, "")
    try:
        for name, password in passwords.items():
            # The password on stdin (asked twice), never on a command line where `ps` would show it; -U would also
            # cut a password at its first colon.
            await _run_tool([tool, str(hashed), name], f"{password}\n{password}\n".encode())
        os.chmod(hashed, 0o600)
        os.replace(hashed, path)
    finally:
        hashed.unlink(missing_ok=True)


async def _run_tool(command: list[str], stdin: bytes) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(30):
            output, _ = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ConfigError(f"{command[0]} did not finish within 30 s") from None
    if process.returncode != 0:
        raise ConfigError(f"{command[0]} failed ({process.returncode}): {output.decode(errors='replace').strip()}")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, replacing it whole."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
