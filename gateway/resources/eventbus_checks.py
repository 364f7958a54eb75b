"""The checks of a Gateway document's `eventbus` settings: the embedded broker's users, their passwords (given,
in a file or in a Secret) and their topic rules. They run with every other check of the documents, so a bad user or
rule is refused with its field path before any broker sees it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.errors import ConfigError
from gateway.resources.schema import EventbusSettings, EventbusUser, Secret, TopicAccess

GATEWAY_USER = "fieldgate"  # the gateway's own user at the embedded broker, reserved
EMBEDDED_ONLY = ("users", "allow_anonymous", "anonymous_acl")


def topic_filter_problem(topic: str) -> str | None:
    """Why `topic` is not a valid MQTT topic filter for a rule, or None."""
    if topic != topic.strip():
        return "a topic filter has no leading or trailing spaces"
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        return "a topic filter has no control characters"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "`#` must be a whole level, and the last one"
        if "+" in level and level != "+":
            return "`+` must be a whole level"
    return None


def eventbus_problems(settings: EventbusSettings, namespace: str,
                      secret_docs: Mapping[tuple[str, str], Secret]) -> list[tuple[str, str]]:
    """(path, message) for every finding in a Gateway document's `eventbus` settings."""
    problems: list[tuple[str, str]] = []
    if settings.url != "embedded":
        for field in EMBEDDED_ONLY:
            if getattr(settings, field) not in (None, []):
                problems.append((f"$.eventbus.{field}", f"configures the embedded broker (url: embedded); the broker "
                                                       f"at {settings.url} has its own access control"))
        return problems
    names: set[str] = set()
    for i, user in enumerate(settings.users):
        path = f"$.eventbus.users[{i}]"
        if user.name == GATEWAY_USER:
            problems.append((f"{path}.name", f"{GATEWAY_USER!r} is the gateway's own user at the embedded broker"))
        elif user.name in names:
            problems.append((f"{path}.name", f"duplicate user {user.name!r}"))
        names.add(user.name)
        try:
            user_password(user, namespace, secret_docs)
        except _PasswordProblem as exc:
            problems.append((f"{path}{exc.field}", str(exc)))
        problems += _rule_problems(f"{path}.acl", user.acl)
    problems += _rule_problems("$.eventbus.anonymous_acl", settings.anonymous_acl or [])
    return problems


def _rule_problems(path: str, rules: list[TopicAccess]) -> list[tuple[str, str]]:
    found = []
    for i, rule in enumerate(rules):
        problem = topic_filter_problem(rule.topic)
        if problem is not None:
            found.append((f"{path}[{i}].topic", f"{rule.topic!r}: {problem}"))
    return found


class _PasswordProblem(ConfigError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def user_password(user: EventbusUser, namespace: str, secret_docs: Mapping[tuple[str, str], Secret]) -> str:
    """The user's password from wherever its settings say; ConfigError (naming the field) when it cannot be had."""
    given = [field for field in ("password", "password_file", "password_secret") if getattr(user, field) is not None]
    if len(given) != 1:
        raise _PasswordProblem("", "give one of password, password_file or password_secret")
    if user.password is not None:
        password, field = user.password, ".password"
    elif user.password_file is not None:
        field = ".password_file"
        path = Path(user.password_file)
        if not path.is_absolute():
            raise _PasswordProblem(field, f"{user.password_file!r} must be an absolute path")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise _PasswordProblem(field, f"cannot read {path}: {exc}") from None
        password = lines[0] if lines else ""
        if not password:
            raise _PasswordProblem(field, f"{path} holds no password (its first line is empty)")
    else:
        ref = user.password_secret
        assert ref is not None
        field = ".password_secret"
        doc = secret_docs.get((namespace, ref.secret))
        if doc is None:
            raise _PasswordProblem(f"{field}.secret", f"no Secret {namespace}/{ref.secret}")
        if ref.key not in doc.data:
            keys = ", ".join(sorted(doc.data)) or "none"
            raise _PasswordProblem(f"{field}.key", f"Secret {namespace}/{ref.secret} has no key {ref.key!r} "
                                                   f"(keys: {keys})")
        password = doc.data[ref.key]
        if not password:
            raise _PasswordProblem(f"{field}.key", f"Secret {namespace}/{ref.secret} key {ref.key!r} is empty")
    if "\n" in password or "\r" in password or "\0" in password:
        raise _PasswordProblem(field, "a password is one line, without NUL characters")
    return password
