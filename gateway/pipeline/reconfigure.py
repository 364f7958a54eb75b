"""The running configuration and every change to it: local resources (UI, API), registry-owned ones (sync) and
reloaded files, checked together as `fieldgate check` would, stored, audited, then handed to the listeners (the
devices, the routes, the eventbus, the workloads, the plugins' `config_changed`), which each move only what
changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.protocols.base import Protocol
from gateway.resources.endpoints import EndpointType
from gateway.resources.loader import LOCAL, REGISTRY, Config, Source, check_documents, parse_yaml, read_path
from gateway.resources.schema import Document, enc_hook
from gateway.store import Store

log = logging.getLogger(__name__)

ConfigListener = Callable[[Config, Config], Awaitable[None]]


class Configuration:
    """Owns the running configuration (`config`, a snapshot replaced whole on every change, never edited)."""

    def __init__(self, config: Config, protocols: Mapping[str, type[Protocol]], store: Store, *,
                 config_path: Path | None = None, endpoint_types: Mapping[str, EndpointType] | None = None) -> None:
        self.config = config
        self.protocols = protocols
        self.endpoint_types = endpoint_types  # None: the built-in ones
        self.store = store
        self.config_path = config_path
        self.listeners: list[ConfigListener] = []
        self._config_lock = asyncio.Lock()

    def add_listener(self, listener: ConfigListener) -> None:
        """Call `listener(old, new)` after every change, in the order added."""
        self.listeners.append(listener)

    async def load_stored(self) -> dict[tuple[str, str], Any]:
        """At start: add the resources of the UI, the API and the registry (kept in the store) to those of the
        files, and store the files' documents; returns the desired values the documents had at the last start."""
        previous = await self.store.resources.previous_desired()
        await self._merge_local_resources()
        await self._save_file_resources()
        return previous

    async def _save_file_resources(self) -> None:
        documents = [(d.kind, d.namespace, d.name, msgspec.json.encode(d, enc_hook=enc_hook))
                     for d in self.config.documents if self.resource_owner(*d.key) == "file"]
        await self.store.resources.replace(documents, source="file")

    async def _merge_local_resources(self) -> None:
        rows = await self.store.resources.stored("local", "registry")
        if not rows:
            return
        raw = list(self.config.raw.values())
        raw += [(Source(row.source, i, f"{row.kind} {row.name}"), row.document) for i, row in enumerate(rows, start=1)]
        try:
            self.config = check_documents(raw, self.protocols, self.endpoint_types)
        except ResourceError as exc:
            log.error("resources from the UI, the API or the registry no longer fit the configuration files; "
                      "running without them: %s", "; ".join(exc.problems))

    def resource_owner(self, kind: str, namespace: str, name: str) -> str | None:
        """Who owns a resource: `file` (edit the file), `local` (UI/API), `registry` (synced); None if unknown."""
        entry = self.config.raw.get((kind, namespace, name))
        if entry is None:
            return None
        return entry[0].file if entry[0].file in (LOCAL, REGISTRY) else "file"

    def validate_yaml(self, text: str, *, label: str = "editor") -> list[Document]:
        """Check documents as `fieldgate check` would, together with the running configuration."""
        return self._merged(parse_yaml(text, label))[1]

    def _merged(self, new: list[tuple[Source, Any]], removed: Iterable[tuple[str, str, str]] = (),
                owner: str = LOCAL) -> tuple[Config, list[Document]]:
        combined = dict(self.config.raw)
        for key in removed:
            combined.pop(key, None)
        keys = []
        for source, raw in new:
            doc_key = document_key(raw)
            if doc_key is not None:
                current = self.resource_owner(*doc_key) if doc_key in combined else None
                if doc_key[0] == "Gateway":
                    raise ConfigError(f"{source.prefix()}: the Gateway document is set in the local files only")
                if current == "file" or (current == REGISTRY and owner != REGISTRY):
                    where = self.config.raw[doc_key][0].file if current == "file" else "the registry"
                    raise ConfigError(f"{source.prefix()}: {doc_key[0]} {doc_key[1]}/{doc_key[2]} is owned by "
                                      f"{where}; change it there")
                keys.append(doc_key)
            combined[doc_key or ("?", "?", str(len(combined)))] = (source, raw)
        config = check_documents(combined.values(), self.protocols, self.endpoint_types)
        return config, [doc for doc in config.documents if doc.key in keys]

    async def apply_documents(self, payload: str | list[Document], *, actor: str, address: str = "",
                              owner: str = LOCAL) -> list[str]:
        """Create or update resources (YAML text or documents) owned by `owner` (`local`: the UI and API;
        `registry`: synced); only changed devices restart. Raises ResourceError with `fieldgate check` lines."""
        async with self._config_lock:
            config, documents = self._merged(self._raw_documents(payload), owner=owner)
            await self._commit(config, documents, [], owner, actor, address)
        return [f"{doc.kind} {doc.namespace}/{doc.name}" for doc in documents]

    async def replace_owned(self, payload: str | list[Document], *, owner: str, actor: str) -> list[str]:
        """Make the resources of `owner` exactly these (registry sync): add, update and delete in one step."""
        async with self._config_lock:
            removed = [key for key in self.config.raw if self.resource_owner(*key) == owner]
            config, documents = self._merged(self._raw_documents(payload), removed=removed, owner=owner)
            gone = [key for key in removed if key not in config.raw]
            await self._commit(config, documents, gone, owner, actor, "")
        return [f"{doc.kind} {doc.namespace}/{doc.name}" for doc in documents]

    async def delete_resource(self, kind: str, namespace: str, name: str, *, actor: str, address: str = "",
                              owner: str = LOCAL) -> None:
        """Delete a resource of `owner`; refused when something still uses it or when another owner has it."""
        key = (kind, namespace, name)
        async with self._config_lock:
            current = self.resource_owner(*key)
            if current is None:
                raise NotFound(f"no {kind} {namespace}/{name}")
            if current != owner:
                raise ConfigError(f"{kind} {namespace}/{name} is owned by {current}; change it there")
            config, _ = self._merged([], removed=[key])
            await self._commit(config, [], [key], owner, actor, address)

    async def reload_files(self) -> None:
        """Re-read the configuration files (SIGHUP) and apply them with the UI, API and registry resources; only
        changed devices restart. Invalid files are refused (ConfigError) and the gateway keeps its configuration."""
        if self.config_path is None:
            raise ConfigError("this gateway was not started from configuration files")
        async with self._config_lock:
            kept = [entry for entry in self.config.raw.values() if entry[0].file in (LOCAL, REGISTRY)]
            try:
                config = check_documents([*read_path(self.config_path), *kept], self.protocols,
                                         self.endpoint_types)
            except ConfigError as exc:
                problems = exc.problems if isinstance(exc, ResourceError) else [str(exc)]
                log.error("reload of %s refused, still running the previous configuration:\n  %s",
                          self.config_path, "\n  ".join(problems))
                raise
            if config.gateway != self.config.gateway:
                log.warning("the Gateway settings in %s changed: most apply after a restart of fieldgate "
                            "(the embedded broker's users and rules and the services settings apply now)",
                            self.config_path)
            await self._reconcile(config)
            await self._save_file_resources()
        log.info("configuration reloaded from %s", self.config_path)

    def _raw_documents(self, payload: str | list[Document]) -> list[tuple[Source, Any]]:
        if isinstance(payload, str):
            return parse_yaml(payload, "editor")
        return [(Source("api", i, f"{d.kind} {d.name}"), msgspec.to_builtins(d, enc_hook=enc_hook))
                for i, d in enumerate(payload, start=1)]

    def log_older_forms(self, old: Config | None, new: Config) -> None:
        """Say once what each Endpoint in the older form is read as (at start, and when one is added or changed)."""
        for key, note in sorted(new.older_forms.items()):
            if old is None or old.older_forms.get(key) != note:
                log.info("%s", note)

    async def _commit(self, config: Config, documents: list[Document], removed: list[tuple[str, str, str]],
                      owner: str, actor: str, address: str) -> None:
        for doc in documents:
            source, raw = config.raw[doc.key]
            config.raw[doc.key] = (Source(owner, source.index, source.label), raw)
            previous = self.config.raw.get(doc.key)
            if previous is not None and previous[1] == raw and self.resource_owner(*doc.key) == owner:
                continue  # unchanged: no write, no audit entry
            await self.store.resources.put(doc.kind, doc.namespace, doc.name,
                                           msgspec.json.encode(doc, enc_hook=enc_hook), owner)
            await self.store.audit.record(actor, "apply", f"{doc.kind} {doc.namespace}/{doc.name}", owner, address)
        for kind, namespace, name in removed:
            await self.store.resources.delete(kind, namespace, name)
            await self.store.audit.record(actor, "delete", f"{kind} {namespace}/{name}", owner, address)
        await self._reconcile(config)

    async def _reconcile(self, config: Config) -> None:
        """Switch to a new configuration and tell every listener, in order."""
        old, self.config = self.config, config
        self.log_older_forms(old, config)
        for listener in self.listeners:
            await listener(old, config)


def document_key(raw: Any) -> tuple[str, str, str] | None:
    if isinstance(raw, dict) and isinstance(raw.get("kind"), str) and isinstance(raw.get("name"), str):
        namespace = raw.get("namespace", "default")
        return (raw["kind"], namespace if isinstance(namespace, str) else "default", raw["name"])
    return None
