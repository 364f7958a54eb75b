"""Secrets at rest: the values of Secret documents are encrypted (Fernet) with a key file in the data dir, and
masked whenever the API shows them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import StoreError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

KEY_FILE = "secrets.key"
SEALED_PREFIX = "fernet:"
MASK = "********"


class SecretBox:
    """Encrypts and decrypts secret values with the node's key (made on first use, mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE
        self._fernet: Fernet | None = None

    @property
    def fernet(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet  # loaded with the first Secret: most nodes have none (~10 MB)

            self._fernet = Fernet(self._load_or_create())
        return self._fernet

    def _load_or_create(self) -> bytes:
        with contextlib.suppress(FileExistsError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            from cryptography.fernet import Fernet

            with os.fdopen(fd, "wb") as file:
                file.write(Fernet.generate_key())
        try:
            return self.path.read_bytes().strip()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the secrets key: {exc}") from exc

    def seal(self, value: str) -> str:
        if value.startswith(SEALED_PREFIX):
            return value
        return SEALED_PREFIX + self.fernet.encrypt(value.encode()).decode()

    def unseal(self, value: str) -> str:
        if not value.startswith(SEALED_PREFIX):
            return value
        from cryptography.fernet import InvalidToken

        try:
            return self.fernet.decrypt(value[len(SEALED_PREFIX):].encode()).decode()
        except InvalidToken:
            raise StoreError(f"a secret value cannot be decrypted with {self.path} (was the key replaced?)"
                             ) from None

    def seal_document(self, kind: str, document: bytes) -> bytes:
        """A resource document as stored: a Secret's values encrypted, any other kind unchanged."""
        if kind != "Secret":
            return document
        raw = msgspec.json.decode(document)
        raw["data"] = {key: self.seal(value) for key, value in raw.get("data", {}).items()}
        return msgspec.json.encode(raw)

    def unseal_document(self, kind: str, document: str | bytes) -> Any:
        """The raw document (decoded JSON) of a stored resource, a Secret's values decrypted."""
        raw = msgspec.json.decode(document)
        if kind == "Secret" and isinstance(raw, dict):
            raw["data"] = {key: self.unseal(value) for key, value in raw.get("data", {}).items()}
        return raw


def masked(data: dict[str, str]) -> dict[str, str]:
    """Secret values as the API shows them: never the value, not even its length."""
    return dict.fromkeys(data, MASK)
