"""Changing resources while the gateway runs: local resources (UI, API), registry-owned ones (sync), and a
reconcile step that restarts only the devices whose configuration changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import ConfigError, NotFound, ResourceError
from gateway.protocols.base import BoundDevice
from gateway.resources.loader import Config, Source, check_documents, parse_yaml, read_path
from gateway.resources.schema import Document, enc_hook
from gateway.twin import Twin, TwinProperty
from gateway.values import coerce

if TYPE_CHECKING:
    from gateway.eventbus.link import EventbusLink
    from gateway.poller import DevicePoller
    from gateway.protocols.base import Protocol
    from gateway.routes import Routes
    from gateway.store import Store
    from gateway.workloads.supervisor import WorkloadManager

log = logging.getLogger(__name__)
LOCAL = "local"  # resources created through the UI or the API, kept in the store
REGISTRY = "registry"  # resources synced from the registry, kept in the store (edge autonomy)


class Reconfiguration:
    """Mixed into gateway.runtime.Gateway, whose state it changes."""

    config: Config
    config_path: Path | None
    store: Store
    twins: dict[str, Twin]
    pollers: dict[str, DevicePoller]
    protocols: dict[str, type[Protocol]]
    routes: Routes
    workloads: WorkloadManager
    eventbus: EventbusLink | None
    _config_lock: asyncio.Lock

    def _start_device(self, device_id: str) -> None:
        raise NotImplementedError

    async def _stop_device(self, device_id: str) -> None:
        raise NotImplementedError

    async def _save_file_resources(self) -> None:
        raise NotImplementedError

    async def _reconfigure_broker(self) -> None:
        raise NotImplementedError

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
        config = check_documents(combined.values(), self.protocols)
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
                config = check_documents([*read_path(self.config_path), *kept], self.protocols)
            except ConfigError as exc:
                problems = exc.problems if isinstance(exc, ResourceError) else [str(exc)]
                log.error("reload of %s refused, still running the previous configuration:\n  %s",
                          self.config_path, "\n  ".join(problems))
                raise
            if config.gateway != self.config.gateway:
                log.warning("the Gateway settings in %s changed: most apply after a restart of fieldgate "
                            "(the embedded broker's users and rules apply now)",
                            self.config_path)
            await self._reconcile(config)
            await self._save_file_resources()
        log.info("configuration reloaded from %s", self.config_path)

    def _raw_documents(self, payload: str | list[Document]) -> list[tuple[Source, Any]]:
        if isinstance(payload, str):
            return parse_yaml(payload, "editor")
        return [(Source("api", i, f"{d.kind} {d.name}"), msgspec.to_builtins(d, enc_hook=enc_hook))
                for i, d in enumerate(payload, start=1)]

    async def _commit(self, config: Config, documents: list[Document], removed: list[tuple[str, str, str]],
                      owner: str, actor: str, address: str) -> None:
        for doc in documents:
            source, raw = config.raw[doc.key]
            config.raw[doc.key] = (Source(owner, source.index, source.label), raw)
            previous = self.config.raw.get(doc.key)
            if previous is not None and previous[1] == raw and self.resource_owner(*doc.key) == owner:
                continue  # unchanged: no write, no audit entry
            await self.store.put_resource(doc.kind, doc.namespace, doc.name,
                                          msgspec.json.encode(doc, enc_hook=enc_hook), owner)
            await self.store.audit(actor, "apply", f"{doc.kind} {doc.namespace}/{doc.name}", owner, address)
        for kind, namespace, name in removed:
            await self.store.delete_resource(kind, namespace, name)
            await self.store.audit(actor, "delete", f"{kind} {namespace}/{name}", owner, address)
        await self._reconcile(config)

    async def _reconcile(self, config: Config) -> None:
        """Switch to a new configuration: stop removed devices, start new ones, restart only changed ones."""
        old, self.config = self.config, config
        if old.routes != config.routes or old.endpoints != config.endpoints:
            await self.routes.stop()
            self.routes.start()
            if self.eventbus is not None:
                await self.eventbus.resubscribe()
        stored = await self.store.load_twins()
        previous = {(device_id, prop.name): prop.spec.desired for device_id, device in old.devices.items()
                    for prop in device.properties.values() if prop.spec.desired is not None}
        for device_id in old.devices.keys() - config.devices.keys():
            await self._stop_device(device_id)
            self.twins.pop(device_id, None)
        for device_id, device in config.devices.items():
            before = old.devices.get(device_id)
            if before is not None and same_device(before, device):
                self.pollers[device_id].device = device
                continue
            if before is not None:
                await self._stop_device(device_id)
            self.twins[device_id] = make_twin(device, stored.get(device_id, {}), previous)
            self._start_device(device_id)
            log.info("%s %s", device_id, "restarted with its new configuration" if before else "added")
        await self.workloads.reconcile(config)
        await self._reconfigure_broker()


def make_twin(device: BoundDevice, rows: dict[str, dict[str, Any]], previous: dict[tuple[str, str], Any]) -> Twin:
    """A device's twin from its stored rows; a document's desired value wins when it changed since last time."""
    twin = Twin(device.id, {})
    for name, prop in device.properties.items():
        row = rows.get(name, {})
        twin_prop = TwinProperty(reported=row.get("reported"), reported_at=row.get("reported_at"))
        doc_desired = prop.spec.desired
        stored_desired = row.get("desired")
        # A value set through the API survives restarts unless the document's own desired value changed.
        if doc_desired is not None and (stored_desired is None or previous.get((device.id, name)) != doc_desired):
            twin_prop.desired = coerce(prop.model, doc_desired)
        elif stored_desired is not None and prop.writable:
            twin_prop.desired = stored_desired
        twin_prop.desired_at = row.get("desired_at")
        twin_prop.pending = twin_prop.desired is not None and prop.writable
        twin.properties[name] = twin_prop
    return twin


def same_device(before: BoundDevice, after: BoundDevice) -> bool:
    """Nothing a poller uses changed: the document, and the model entry of every property."""
    return before.resource == after.resource and [p.model for p in before.properties.values()] == [
        p.model for p in after.properties.values()]


def document_key(raw: Any) -> tuple[str, str, str] | None:
    if isinstance(raw, dict) and isinstance(raw.get("kind"), str) and isinstance(raw.get("name"), str):
        namespace = raw.get("namespace", "default")
        return (raw["kind"], namespace if isinstance(namespace, str) else "default", raw["name"])
    return None
