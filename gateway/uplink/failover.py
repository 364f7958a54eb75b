"""Offline failover, the node's part: while its group is cut off from the registry, the members still move apps off
a dead member, through the group's etcd (gateway.registry.offline is the registry's part).

A node whose Gateway document has `consensus:` runs an etcd member of its group (a child process that dies with the
gateway, data in `<data dir>/consensus/etcd`), with the peers of the failover plan the registry sends once every
node of the group has reported its consensus settings. The plan (members, and the placements of the BatchWorkloads
with `failover:` on the group, each with its Workload and the ConfigItems and Secrets it uses) is kept in the data
dir, so a node that starts while the registry is away knows it too.

The group's etcd speaks mutual TLS only, peers and clients alike: the plan carries this member's certificate (the
hosts of its peer and client URLs as names, server and client auth) and the CA of the group, which the registry keeps
for that group alone (gateway.registry.consensus_ca). They are written to `<data dir>/consensus` (`ca.pem`,
`member.pem`, `member.key`, 0600); etcd trusts that CA only for its clients and its peers, and the node's client
verifies its member against it. A new certificate (renewed, or for other URLs) restarts the member with it.

Leases fence the placements. Each member holds an etcd lease of `lease_ttl` seconds, renewed while its gateway
lives, and under it a key `members/<node>` (alive) and, for every app of the plan it runs, the placement key
`placements/<namespace>/<name>`, created by compare-and-swap (only where no key is: create revision 0). A node runs an
app of the plan only while it holds that key under its own live lease: before it starts one it takes the key, and
when its lease lapses (or its etcd member loses the group) its instances stop; they also die with the gateway. When
a member dies its lease expires, its keys go, and once the app's place has been vacant for the BatchWorkload's
`failover.after` while its host is not alive, a surviving member (the one holding the fewest, the others a lease
later) takes the key and starts the app from the plan's documents. The returning node finds the key held by
another and does not start it. No election is written here: etcd's Raft is the only one.

The node reports what it took over with each heartbeat (gateway.wire.Takeover) until the registry's plan names it
as the host (the registry adopts the takeover, audited `failover.offline`) or names another (then it lets it go).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from cryptography import x509

from gateway.errors import FieldgateError
from gateway.pki import write_private
from gateway.resources.loader import REGISTRY, document_value
from gateway.resources.schema import AnyDocument, ConsensusSettings, Workload, dec_hook
from gateway.wire import FailoverPlacement, FailoverPlan, MemberTls, Takeover

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
MIN_TTL, MAX_TTL = 3.0, 300.0  # seconds of a lease
REQUEST_TIMEOUT = 3.0
BACK_TO_OWN = 30.0  # seconds on another member before the client tries its own again
MEMBER_RESTART = 5.0  # seconds between two starts of a member that exited
PR_SET_PDEATHSIG = 1
LEASE_MARGIN = 1.0  # seconds before its expiry at the group when this node stops counting on its lease


class Taken(msgspec.Struct, kw_only=True):
    """A placement this node took over, with what it needs to run it without the registry."""

    workload: str
    origin: str
    previous: str
    at: float  # unix time
    documents: list[dict[str, Any]]


class Held(msgspec.Struct, kw_only=True):
    plan: FailoverPlan | None = None
    taken: list[Taken] = []
    base: list[dict[str, Any]] | None = None  # the registry's last documents


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    """The range end of every key starting with `prefix` (its last byte plus one)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class ConsensusError(FieldgateError):
    """The group's etcd did not answer as expected."""


class Entry(msgspec.Struct):
    key: str
    value: dict[str, Any]
    lease: int
    mod_revision: int


class Etcd:
    """The few calls of etcd's v3 API (its JSON gateway) the failover needs, over mutual TLS: the member's certificate
    as the client's, the group's CA the only one trusted.

    `urls` are the node's own member first, then the group's other members: a call its member does not answer within
    `attempt_timeout` (stopped, restarting with a new certificate, still rejoining) goes to the next one, so the
    node's lease and keys live on while its member is away; it comes back to its own after BACK_TO_OWN seconds. A
    compare-and-swap that may have reached a member is never sent again (a refused connection only): reads, lease
    renewals and puts of the same value are."""

    def __init__(self, urls: str | list[str], ca: Path, cert: Path, key: Path, *,
                 attempt_timeout: float = REQUEST_TIMEOUT) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(cert, key)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.attempt_timeout = attempt_timeout if len(self.urls) > 1 else REQUEST_TIMEOUT
        self.clients = [httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, verify=context) for url in self.urls]
        self.current = 0  # the member answering now (0: the node's own)
        self._away_since = 0.0

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def call(self, path: str, body: dict[str, Any], *, repeatable: bool = True) -> dict[str, Any]:
        if self.current and time.monotonic() - self._away_since > BACK_TO_OWN:
            self.current = 0
        for attempt in range(len(self.clients)):
            last = attempt == len(self.clients) - 1
            try:
                response = await self.clients[self.current].post(path, json=body, timeout=self.attempt_timeout)
                if response.status_code < 500 or last or not repeatable:
                    break
                failure = f"{response.status_code} {response.text.strip()[:100]}"
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: another member may take it
                if last:
                    raise
                failure = f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:  # it may have been applied: only what may be sent twice moves on
                if last or not repeatable:
                    raise
                failure = f"{type(exc).__name__}: {exc}"
            if self.current == 0:
                self._away_since = time.monotonic()
                log.info("offline failover: the node's etcd member at %s does not answer (%s): asking the group's "
                         "other members", self.urls[0], failure[:200])
            self.current = (self.current + 1) % len(self.clients)
        if response.status_code != 200:
            raise ConsensusError(f"etcd {path}: {response.status_code} {response.text.strip()[:200]}")
        answer = response.json()
        if not isinstance(answer, dict):
            raise ConsensusError(f"etcd {path}: not an object")
        return answer

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: its id and TTL (etcd may lengthen it to its own minimum)."""
        answer = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    async def keepalive(self, lease: int) -> int:
        """The lease's TTL from now; 0 when it expired."""
        answer = await self.call("/v3/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": lease})

    async def put(self, key: str, value: dict[str, Any], lease: int) -> None:
        await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(json.dumps(value)), "lease": lease})

    async def create(self, key: str, value: dict[str, Any], lease: int) -> bool:
        """Put the key under the lease only where there is none (compare-and-swap on its create revision)."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(json.dumps(value)), "lease": lease}}]},
            repeatable=False)
        return bool(answer.get("succeeded"))

    async def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete the key if nobody changed it since `mod_revision`."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}],
            "success": [{"request_delete_range": {"key": _b64(key)}}]}, repeatable=False)
        return bool(answer.get("succeeded"))

    async def entries(self, prefix: str) -> dict[str, Entry]:
        """Every key under the prefix, by its name after the prefix (a linearizable read)."""
        answer = await self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        found = {}
        for kv in answer.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            try:
                value = json.loads(base64.b64decode(kv.get("value", "")))
            except ValueError:
                continue
            if isinstance(value, dict):
                found[key[len(prefix):]] = Entry(key, value, int(kv.get("lease", 0)), int(kv.get("mod_revision", 0)))
        return found

    async def leader(self) -> str:
        """The name of the group's leader, as this member sees it ("" when none)."""
        status = await self.call("/v3/maintenance/status", {})
        members = await self.call("/v3/cluster/member/list", {})
        leader = str(status.get("leader", ""))
        return next((str(m.get("name", "")) for m in members.get("members", []) if str(m.get("ID")) == leader), "")


class OfflineFailover:
    """The node's member of its group's consensus store and the fence of the plan's placements."""

    def __init__(self, gateway: GatewayAPI, settings: ConsensusSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.node = gateway.node_name
        self.ttl = int(min(max(float(settings.lease_ttl), MIN_TTL), MAX_TTL))
        self.dir = gateway.data_dir / "consensus"
        self.plan: FailoverPlan | None = None
        self.taken: dict[str, Taken] = {}
        self.base: list[dict[str, Any]] | None = None  # the registry's last documents, before any taken over
        self._taken_mono: dict[str, float] = {}  # monotonic time of each takeover, against a heartbeat's start
        self._load()
        self.held: set[str] = set()  # placement keys held under the live lease
        self.holders: dict[str, str] = {}  # the node holding each placement key, as last read
        self.alive: set[str] = set()
        self.leader = ""
        self.lease: int | None = None
        self.lease_until = 0.0  # monotonic: the lease is live until then at the latest
        self.state, self.reason = "no plan", "the registry has sent no failover plan for the node's group"
        self.member: asyncio.subprocess.Process | None = None
        self._member_config: tuple[str, ...] = ()  # the command line and certificates the member runs with
        self._member_started = -MEMBER_RESTART
        self._vacant: dict[str, float] = {}
        self._etcd: Etcd | None = None
        self._fence_seen: tuple[str, ...] = ()
        # apps of BatchWorkloads that came before a plan saying whether they are the group's to fence: they wait for
        # the answer to the next heartbeat (which brings the plan if they are); those the node has at its start
        # (and the plan then) run as they did
        self._confirmed = {f"{ns}/{name}" for ns, name in gateway.config.workloads}
        self._pending: dict[str, float] = {}

    # --- what is kept in the data dir -------------------------------------------------------------------------

    @property
    def _file(self) -> Path:
        return self.dir / "failover.json"

    def _load(self) -> None:
        with contextlib.suppress(OSError, msgspec.ValidationError, msgspec.DecodeError):
            held = msgspec.json.decode(self._file.read_bytes(), type=Held)
            self.plan = held.plan if held.plan is not None and held.plan.members else None
            self.taken = {t.workload: t for t in held.taken}
            self._taken_mono = dict.fromkeys(self.taken, 0.0)
            self.base = held.base

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self._file.with_suffix(".tmp")
        temporary.touch(mode=0o600)  # the plan holds the Secrets of the group's apps
        temporary.write_bytes(msgspec.json.encode(Held(plan=self.plan, taken=list(self.taken.values()),
                                                   base=self.base)))
        os.replace(temporary, self._file)

    # --- the fence (gateway.hookspecs.workload_fence) ---------------------------------------------------------

    def _guarded(self, key: str) -> bool:
        return key in self.taken or (self.plan is not None and any(p.workload == key for p in self.plan.placements))

    def lease_live(self) -> bool:
        return self.lease is not None and time.monotonic() < self.lease_until

    def fenced(self, workload: Workload) -> str | None:
        key = f"{workload.namespace}/{workload.name}"
        if not self._guarded(key):
            if self.plan is None or key in self._confirmed or not {"batch", "origin"} <= workload.labels.keys():
                return None
            self._pending.setdefault(key, time.monotonic())
            return "waiting for the failover plan of the node's group"
        if key in self.held and self.lease_live():
            return ""
        holder = self.holders.get(key)
        if holder and holder != self.node:
            return f"held by node {holder} of the group (offline failover)"
        return "waiting for its placement lock in the group's consensus store (offline failover)"

    def _fence_state(self) -> tuple[str, ...]:
        live = self.lease_live()
        return tuple(sorted(f"{key}={'run' if key in self.held and live else self.holders.get(key, '')}"
                            for key in {*(p.workload for p in (self.plan.placements if self.plan else [])),
                                        *self.taken}))

    async def _refence(self) -> None:
        state = self._fence_state()
        if state != self._fence_seen:
            self._fence_seen = state
            await self.gateway.workloads.refence()

    # --- the registry's side: plan down, takeovers up ---------------------------------------------------------

    def outgoing(self) -> dict[str, Any]:
        body: dict[str, Any] = {"failover_version": self.plan.version if self.plan else ""}
        if self.taken:
            body["takeovers"] = [msgspec.to_builtins(Takeover(workload=t.workload, origin=t.origin,
                                                              previous=t.previous, at=t.at))
                                 for t in self.taken.values()]
        return body

    def plan_received(self, plan: FailoverPlan | None) -> None:
        """The plan of a heartbeat answer (None: unchanged), taken before its documents so that the apps it guards
        wait for their placement lock from their first start."""
        if plan is None:
            return
        self.plan = plan if plan.members and any(m.name == self.node for m in plan.members) else None
        self._save()
        log.info("failover plan %s of group %s: %d members, %d placements", plan.version, plan.group or "-",
                 len(plan.members), len(plan.placements))

    async def settle(self, plan: FailoverPlan | None, started: float) -> None:
        """After the documents of a heartbeat answer that began at `started` (monotonic): the takeovers it carried
        are settled by the plan it brought, adopted (the plan names this node) or placed elsewhere."""
        answered = [key for key, seen in self._pending.items() if seen < started]
        for key in answered:
            self._pending.pop(key)
            self._confirmed.add(key)
        if answered:
            await self.gateway.workloads.refence()
        if plan is None:
            return
        settled = [key for key, at in self._taken_mono.items() if at < started]
        for key in settled:
            host = next((p.host for p in plan.placements if p.workload == key), None)
            log.info("workload %s taken over in the group: the registry %s", key,
                     "agrees" if host == self.node else f"placed it on {host}" if host else "no longer has it")
            self.taken.pop(key, None)
            self._taken_mono.pop(key, None)
        if settled:
            await self._publish()

    def merged(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The registry's documents (kept as the base) with those of the apps this node took over and the registry
        has not adopted yet."""
        if self.base != documents:
            self.base = documents
            self._save()
        return self._with_taken(documents)

    def _with_taken(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        have = {(d.get("kind"), d.get("namespace", "default"), d.get("name")) for d in documents}
        extra = []
        for taken in self.taken.values():
            for raw in taken.documents:
                key = (raw.get("kind"), raw.get("namespace", "default"), raw.get("name"))
                if key not in have:
                    have.add(key)
                    extra.append(raw)
        return documents + extra

    async def _publish(self) -> None:
        """Run the registry's documents with those taken over: the node's registry-owned resources."""
        if self.base is None:  # nothing taken over since the registry was last heard: what runs is its documents
            self.base = [document_value(raw) for (source, raw) in self.gateway.config.raw.values()
                         if source.file == REGISTRY]
        documents = [msgspec.convert(raw, AnyDocument, dec_hook=dec_hook) for raw in self._with_taken(self.base)]
        await self.gateway.resources.replace_owned(documents, owner=REGISTRY, actor="failover")
        self._save()

    # --- the member of the group's etcd -----------------------------------------------------------------------

    @property
    def _tls_files(self) -> tuple[Path, Path, Path]:
        """The group's CA, the member's certificate and its key, as the registry sent them."""
        return self.dir / "ca.pem", self.dir / "member.pem", self.dir / "member.key"

    def _write_tls(self, tls: MemberTls) -> None:
        """The plan's certificates into the data dir (0600), those that changed only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path, text in zip(self._tls_files, (tls.ca, tls.cert, tls.key), strict=True):
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            temporary = path.with_suffix(path.suffix + ".tmp")
            write_private(temporary, text.encode())
            os.replace(temporary, path)

    async def _stop_member(self) -> None:
        member, self.member = self.member, None
        if member is not None and member.returncode is None:
            member.terminate()
            try:
                async with asyncio.timeout(5):
                    await member.wait()
            except TimeoutError:
                member.kill()
                await member.wait()

    async def _ensure_member(self, plan: FailoverPlan) -> None:
        if plan.tls is None:
            raise ConsensusError("the registry sent no certificates for the group's etcd (a registry older than "
                                 "the node?)")
        binary = shutil.which(self.settings.binary)
        if binary is None:
            raise ConsensusError(f"consensus.binary: {self.settings.binary!r} not found (install etcd-server)")
        ca, cert, key = self._tls_files
        data = self.dir / "etcd"
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in plan.members)
        argv = [binary, "--name", self.node, "--data-dir", str(data),
                "--listen-peer-urls", self.settings.peer_url, "--initial-advertise-peer-urls", self.settings.peer_url,
                "--listen-client-urls", self.settings.client_url, "--advertise-client-urls", self.settings.client_url,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"fieldgate-{plan.group}",
                "--client-cert-auth", "--trusted-ca-file", str(ca), "--cert-file", str(cert), "--key-file", str(key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(ca), "--peer-cert-file", str(cert),
                "--peer-key-file", str(key),
                "--heartbeat-interval", "200", "--election-timeout", "2000",
                "--logger", "zap", "--log-level", "warn"]
        config = (*argv, plan.tls.ca, plan.tls.cert)
        if self.member is not None and self.member.returncode is None:
            if config == self._member_config:
                return
            # a renewed certificate, or other URLs: the member restarts with them, and the client too
            log.info("etcd member %s of group %s restarts with its new certificate or peers", self.node, plan.group)
            await self._stop_member()
            self._member_started = -MEMBER_RESTART
        if time.monotonic() - self._member_started < MEMBER_RESTART:
            return
        self._member_started = time.monotonic()
        if config != self._member_config and self._etcd is not None:  # the client takes the new certificate too
            await self._etcd.close()
            self._etcd = None
        await asyncio.to_thread(self._write_tls, plan.tls)
        self._member_config = config
        libc = ctypes.CDLL(None, use_errno=True)

        def dies_with_gateway() -> None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        output = await asyncio.to_thread((self.dir / "etcd.log").open, "ab")
        try:
            self.member = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                preexec_fn=dies_with_gateway)
        finally:
            output.close()
        log.info("etcd member %s of group %s started (pid %d), peers %s", self.node, plan.group, self.member.pid,
                 cluster)

    async def close(self) -> None:
        """The gateway stops, and its apps with it: its placements are free for the others at once."""
        if self._etcd is not None:
            if self.lease is not None:
                with contextlib.suppress(httpx.HTTPError, ConsensusError):
                    await self._etcd.revoke(self.lease)
                self.lease, self.held = None, set()
            await self._etcd.close()
        await self._stop_member()

    # --- the loop ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        period = min(max(self.ttl / 5, 0.5), 2.0)
        try:
            while True:
                try:
                    async with asyncio.timeout(max(self.ttl / 3, 1.0)):
                        await self._tick()
                except (httpx.HTTPError, ConsensusError, KeyError, ValueError, OSError, TimeoutError) as exc:
                    if self.state != "unreachable":
                        log.warning("offline failover: the group's consensus store: %s", exc)
                    self.state, self.reason = "unreachable", str(exc)[:300] or type(exc).__name__
                    self.held = self.held if self.lease_live() else set()
                await self._refence()
                left = self.lease_until - time.monotonic()  # a lease that lapses stops its apps on time
                await asyncio.sleep(min(period, left) if left > 0 else period)
        finally:
            await self.close()

    def _prefix(self, plan: FailoverPlan) -> str:
        return f"/fieldgate/groups/{plan.group}/"

    async def _tick(self) -> None:
        plan = self.plan
        if plan is None:
            self.state, self.reason = "no plan", "the registry has sent no failover plan for the node's group"
            self.held.clear()
            return
        await self._ensure_member(plan)
        if self._etcd is None:
            others = [m.client_url for m in plan.members if m.name != self.node and m.client_url]
            # a tick has max(ttl / 3, 1) s: time in it to try the node's own member and one more
            self._etcd = Etcd([self.settings.client_url, *others], *self._tls_files,
                              attempt_timeout=max(self.ttl / 3, 1.0) / 3)
        etcd, prefix = self._etcd, self._prefix(plan)
        if self.lease is not None:
            sent = time.monotonic()
            ttl = await etcd.keepalive(self.lease)
            if ttl > 0:
                self.lease_until = sent + ttl - LEASE_MARGIN
            else:
                log.warning("offline failover: lease %x of node %s expired", self.lease, self.node)
                self.lease, self.held = None, set()
        if self.lease is None:
            sent = time.monotonic()
            self.lease, granted = await etcd.grant(self.ttl)
            self.lease_until = sent + granted - LEASE_MARGIN
            await etcd.put(f"{prefix}members/{self.node}", {"node": self.node, "lease": self.lease}, self.lease)
        entries = await etcd.entries(prefix)
        self.alive = {key.split("/", 1)[1] for key, e in entries.items() if key.startswith("members/")}
        if self.node not in self.alive:
            await etcd.put(f"{prefix}members/{self.node}", {"node": self.node, "lease": self.lease}, self.lease)
            self.alive.add(self.node)
        with contextlib.suppress(httpx.HTTPError, ConsensusError, KeyError, ValueError):
            self.leader = await etcd.leader()
        placed = {key.split("/", 1)[1]: e for key, e in entries.items() if key.startswith("placements/")}
        self.holders = {key: str(e.value.get("node", "")) for key, e in placed.items()}
        load: dict[str, int] = dict.fromkeys(self.alive, 0)
        for holder in self.holders.values():
            load[holder] = load.get(holder, 0) + 1
        # a deleted app keeps its key until its instances have stopped
        runs_here = {f"{ns}/{name}" for ns, name in self.gateway.config.workloads} | self.gateway.workloads.closing
        changed = False
        for placement in plan.placements:
            changed |= await self._placement(etcd, prefix, placement, placed.get(placement.workload), runs_here,
                                             load)
        for key in list(self.taken):  # taken over, then dropped from the plan: let it go
            if not any(p.workload == key for p in plan.placements):
                self.taken.pop(key)
                self._taken_mono.pop(key, None)
                changed = True
        if changed:
            self._save()
            await self._publish()
        self.state = "member"
        self.reason = f"lease {self.lease:x}, {len(self.held)} placements held"

    async def _placement(self, etcd: Etcd, prefix: str, placement: FailoverPlacement, entry: Entry | None,
                         runs_here: set[str], load: dict[str, int]) -> bool:
        """Take, keep or let go one placement key; whether what this node took over changed."""
        key, lease = placement.workload, self.lease
        assert lease is not None
        wanted = key in runs_here or key in self.taken
        path = f"{prefix}placements/{key}"
        value = {"node": self.node, "lease": lease, "origin": placement.origin, "at": time.time()}
        if entry is not None:
            self._vacant.pop(key, None)
            if entry.lease == lease:
                if wanted:
                    self.held.add(key)
                else:  # placed elsewhere now: the place is free for its host
                    await etcd.delete_if(entry.key, entry.mod_revision)
                    self.held.discard(key)
                return False
            self.held.discard(key)
            if key in self.taken and entry.value.get("node") != self.node:  # another member has it (not this
                # node's lease from before a restart of the gateway, which expires): this node runs it no more
                log.warning("workload %s: held by node %s of the group, this node lets it go", key,
                            entry.value.get("node"))
                self.taken.pop(key)
                self._taken_mono.pop(key, None)
                return True
            return False
        self.holders.pop(key, None)
        if wanted:
            if await etcd.create(path, value, lease):
                self.held.add(key)
                self.holders[key] = self.node
            return False
        if placement.host in self.alive:  # its host lives: it takes the key itself
            self._vacant.pop(key, None)
            return False
        now = time.monotonic()
        since = self._vacant.setdefault(key, now)
        first = min(self.alive, key=lambda n: (load.get(n, 0), n)) if self.alive else self.node
        if now - since < placement.after or (first != self.node and now - since < placement.after + self.ttl):
            return False
        if not await etcd.create(path, value, lease):
            return False
        self.held.add(key)
        self.holders[key] = self.node
        load[self.node] = load.get(self.node, 0) + 1
        self.taken[key] = Taken(workload=key, origin=placement.origin, previous=placement.host, at=time.time(),
                                documents=placement.documents)
        self._taken_mono[key] = time.monotonic()
        log.warning("workload %s: its host %s is gone from the group; this node takes it over", key, placement.host)
        return True

    # --- status -----------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "engine": self.settings.engine, "state": self.state, "reason": self.reason,
            "group": plan.group if plan else "", "plan": plan.version if plan else "",
            "member": {"peer_url": self.settings.peer_url, "client_url": self.settings.client_url,
                       "pid": self.member.pid if self.member is not None and self.member.returncode is None
                       else None},
            "members": [{"name": m.name, "peer_url": m.peer_url, "alive": m.name in self.alive}
                        for m in (plan.members if plan else [])],
            "leader": self.leader,
            "lease": {"id": f"{self.lease:x}" if self.lease is not None else "", "ttl": self.ttl,
                      "live": self.lease_live()},
            "held": sorted(self.held) if self.lease_live() else [],
            "taken_over": sorted(self.taken),
            "certificate_until": _not_after(plan.tls.cert) if plan and plan.tls else "",
        }


@functools.lru_cache(maxsize=4)
def _not_after(cert_pem: str) -> str:
    """When the member's certificate ends (ISO 8601, UTC); the registry sends a new one 30 days before."""
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.isoformat()
    except ValueError:
        return ""
