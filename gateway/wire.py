"""The messages between a node and the registry, as msgspec Structs both sides import, and the limits both enforce.

The node's side is gateway.uplink, the registry's gateway.registry; neither imports the other. Nodes and registries of
different versions talk to each other, so the requests and answers ignore the fields they do not know (no
`forbid_unknown_fields`): a newer peer may add a field and the older one goes on without it. What a node reports in
them (twins, workloads and their events, upgrades) is checked strictly and bounded, as the registry keeps it.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec

from gateway.logs import LogEntry
from gateway.resources.schema import NODE_NAME_RULE

# --- joining (`POST /api/v1/join`, `POST /api/v1/join/batch`) ------------------------------------------------------


class JoinRequest(msgspec.Struct, kw_only=True):
    token: str  # "<id>.<secret>" (the CA fingerprint part stays with the node)
    csr: str
    name: Annotated[str | None, msgspec.Meta(description=f"the node name asked for (default: the registry picks "
                                                         f"one): {NODE_NAME_RULE}; not 'self'")] = None


class JoinResponse(msgspec.Struct, kw_only=True):
    node: str
    certificate: str
    ca: str
    heartbeat_interval: float
    channel: str = ""  # where the channel is: see HeartbeatResponse.channel


class BatchJoinRequest(msgspec.Struct, kw_only=True):
    csr: str
    hint: str = ""  # the node's serial number or hostname, or the name asked for


class BatchJoinResponse(JoinResponse, kw_only=True):
    batch: str


class BundleInfo(msgspec.Struct, kw_only=True):
    """bundle.json inside a batch bundle: written by the registry, read by the node that joins with it."""

    batch: str
    registry: list[str]
    labels: dict[str, str]
    expires_at: float
    ca_fingerprint: str


# --- twins (up with the heartbeat, desired values down with its answer) --------------------------------------------

MAX_REPORT_DEVICES = 2000  # devices in one heartbeat; a node with more sends the rest with the next ones
MIN_REPORT_INTERVAL = 1.0  # seconds between two twin reports of a node, however often it heartbeats
# A heartbeat body the registry takes, and the part of it a node fills with twin reports (JSON bytes): a node with
# many devices, or long values, sends the rest with the next heartbeats. Devices x properties x max_length could
# otherwise make one heartbeat of any size (100 properties of 1 KiB strings on 2000 devices: 400 MB).
MAX_HEARTBEAT = 16 << 20
TWINS_BUDGET = 4 << 20
REPORT_VALUE_MAX = 1024  # characters of a value in a report that alone is too large for a heartbeat


class PropertyReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    reported: Any = None
    reported_at: float | None = None
    quality: str = "unknown"
    desired: Any = None  # what the node's twin wants, whoever set it
    error: str | None = None


class DeviceReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    device: str  # <namespace>/<name>
    state: str
    reason: str = ""
    properties: dict[str, PropertyReport] = {}


class DesiredValue(msgspec.Struct, kw_only=True):
    device: str
    property: str
    value: Any
    version: int


class DesiredError(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    device: str
    property: str
    version: int
    error: str


class DesiredAck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The node took the desired values up to `version`; `errors` are those it refused."""

    version: int
    errors: list[DesiredError] = []


DeviceReports = Annotated[list[DeviceReport], msgspec.Meta(max_length=MAX_REPORT_DEVICES)]
MAX_UNIT = 32  # characters of a unit (`degC`, `kWh`, `m3/h`)
MAX_DESCRIBED_PROPERTIES = 1000


class DeviceDescription(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """What a reported device is, for the registry's pages: its model and the unit of each property that has one.
    Sent with a device's report when it changed since the registry last took it."""

    device: str  # <namespace>/<name>
    model: Annotated[str, msgspec.Meta(max_length=253)] = ""
    units: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=MAX_UNIT)]],
                     msgspec.Meta(max_length=MAX_DESCRIBED_PROPERTIES)] = {}


DeviceDescriptions = Annotated[list[DeviceDescription], msgspec.Meta(max_length=MAX_REPORT_DEVICES)]

# --- workloads (their status and events, up with the heartbeat) ----------------------------------------------------

MAX_REPORTS = 1000
MAX_EVENTS = 20  # per workload and report: the newest the node has not delivered yet
MAX_REASON = 1000


# A time a node reports (seconds since the epoch): finite, not before 1970 nor after 2100, so the pages that show it
# and the databases that keep it take every one.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=4_102_444_800.0)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]  # a BIGINT in PostgreSQL


class EventReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    seq: Seq
    ts: Timestamp
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    instance: Annotated[str, msgspec.Meta(max_length=300)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""


class ContainerReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One container of a pod (a workload with `containers`)."""

    name: str
    state: str
    restarts: int = 0
    last_exit: str = ""


MAX_CONTAINERS = 16  # a Workload's `containers` at most


# omit_defaults: an instance of one process or image sends no `containers`, as before pods
class InstanceReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    id: str
    state: str
    ready: bool = False
    restarts: int = 0
    ports: dict[str, int] = {}
    containers: Annotated[list[ContainerReport], msgspec.Meta(max_length=MAX_CONTAINERS)] = []


class WorkloadReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workload: str  # <namespace>/<name>
    status: str
    reason: str = ""
    replicas: int = 0
    ready: int = 0
    restarts: int = 0
    last_event: str = ""
    instances: list[InstanceReport] = []
    events: Annotated[list[EventReport], msgspec.Meta(max_length=MAX_EVENTS)] = []


WorkloadReports = Annotated[list[WorkloadReport], msgspec.Meta(max_length=MAX_REPORTS)]

# --- routes (their counters, up with the heartbeat) ------------------------------------------------------------------

MAX_ROUTE_REPORTS = 1000  # routes in one heartbeat (~300 bytes each): the first ones by name when a node has more
Count = Annotated[int, msgspec.Meta(ge=0)]


class RouteReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The counters of one registry-owned route on a node (gateway.pipeline.routes counts them)."""

    route: Annotated[str, msgspec.Meta(max_length=507)]  # <namespace>/<name>
    accepted: Count = 0  # messages the route took from its source
    delivered: Count = 0  # messages its sink delivered
    failed: Count = 0  # deliveries that failed (retried from the outbox)
    dropped: Count = 0  # messages given up
    queued: Count = 0  # messages waiting in its outbox
    state: Annotated[str, msgspec.Meta(max_length=32)] = ""
    last_error: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""


RouteReports = Annotated[list[RouteReport], msgspec.Meta(max_length=MAX_ROUTE_REPORTS)]


# --- services (their events, up with the heartbeat) ------------------------------------------------------------------

MAX_SERVICE_EVENTS = 100  # in one heartbeat: the oldest the node has not delivered yet, the rest with the next ones


class ServiceEventReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A change of one Service on a node (gateway.services.mesh): its endpoints, its addresses, its proxies."""

    seq: Seq  # grows on the node: the registry keeps each (node, service, ts, seq) once
    ts: Timestamp
    service: Annotated[str, msgspec.Meta(min_length=3, max_length=507)]  # <namespace>/<name>
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    detail: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""


ServiceEvents = Annotated[list[ServiceEventReport], msgspec.Meta(max_length=MAX_SERVICE_EVENTS)]


# --- upgrades (an assignment down with the heartbeat answer, its status up with every heartbeat) -------------------

WHEEL_FILE = re.compile(r"^[A-Za-z0-9_.+-]+\.whl$")


class UpgradeReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A node's state of the upgrade task it was handed last."""

    task: Annotated[str, msgspec.Meta(max_length=64)]
    status: Literal["upgrading", "succeeded", "failed-rolled-back", "failed-rollback-failed"]
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    log: Annotated[str, msgspec.Meta(max_length=8000)] = ""


class WheelFile(msgspec.Struct, kw_only=True):
    name: str
    sha256: str
    size: int


class UpgradeAssignment(msgspec.Struct, kw_only=True):
    """What the heartbeat answer tells a node to install: a gateway version (its wheels) or, `kind` "os", the
    appliance's system (one RAUC bundle in `wheels`, fetched from the same route)."""

    task: str
    version: str
    deadline: float
    wheels: list[WheelFile]
    # "gateway" or "os"; registries before OS bundles send none (a gateway version). A str, not a Literal: a kind
    # added later must not make an older node refuse the whole heartbeat answer
    kind: str = "gateway"


# --- resource samples (up with the heartbeat, as `info.metrics`) ---------------------------------------------------

SERIES: tuple[str, ...] = (
    "cpu_percent", "memory_used", "memory_percent", "disk_percent", "disk_read_bps", "disk_write_bps",
    "net_rx_bps", "net_tx_bps", "process_rss", "points_per_s", "outbox_depth")
Sample = dict[str, float | None]


def clean_sample(raw: Any) -> Sample:
    """The known series of a sample a node sent, as finite floats; anything else is dropped."""
    if not isinstance(raw, dict):
        return {}
    sample: Sample = {}
    for name in SERIES:
        value = raw.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            sample[name] = float(value)
    return sample


# --- per-instance figures of edge apps and what the node can run (up with the heartbeat) -------------------------

MAX_FIGURES = 500  # instances in one heartbeat (gateway.workloads.figures samples at most as many)
APP_SERIES: tuple[str, ...] = ("cpu_percent", "memory_bytes", "disk_read_bps", "disk_write_bps", "net_rx_bps",
                               "net_tx_bps")
Figure = Annotated[float, msgspec.Meta(ge=0, le=1e15)] | None


class AppFigures(msgspec.Struct, array_like=True):
    """One instance's resources over the node's last sampling interval, sent as a JSON array (about 60 bytes):
    CPU in % of one core, memory in bytes, disk and network in bytes/s; null where the node cannot tell (the
    network of an app on the host's network). Elements after these (a newer node's) are ignored."""

    workload: Annotated[str, msgspec.Meta(min_length=3, max_length=507)]  # <namespace>/<name>
    instance: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    cpu_percent: Figure = None
    memory_bytes: Figure = None
    disk_read_bps: Figure = None
    disk_write_bps: Figure = None
    net_rx_bps: Figure = None
    net_tx_bps: Figure = None


AppFiguresList = Annotated[list[AppFigures], msgspec.Meta(max_length=MAX_FIGURES)]
MAX_ACCELERATORS = 64
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e15)]


class Allocatable(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a node offers its apps: CPU cores, memory bytes and named accelerators by count
    (`nvidia.com/gpu: 2`); fields a newer node adds are ignored."""

    cpu: Amount
    memory: Amount
    accelerators: Annotated[dict[Annotated[str, msgspec.Meta(max_length=253)], Annotated[int, msgspec.Meta(ge=0)]],
                            msgspec.Meta(max_length=MAX_ACCELERATORS)] = {}


# --- the heartbeat (`POST /api/v1/heartbeat`, mutual TLS) ----------------------------------------------------------


# --- offline failover (the group's plan down with the heartbeat answer, takeovers up with the heartbeat) -----------

MAX_GROUP_MEMBERS = 64
MAX_FAILOVER_PLACEMENTS = 256
MAX_TAKEOVERS = 256


class GroupMember(msgspec.Struct, kw_only=True):
    name: str
    peer_url: str  # where the other members reach its etcd member
    client_url: str  # where the gateways reach its etcd member


class FailoverPlacement(msgspec.Struct, kw_only=True):
    workload: str  # "<namespace>/<name>" of the Workload the registry made of a BatchWorkload for `origin`
    origin: str
    host: str  # the node the registry placed it on
    after: float  # the BatchWorkload's failover.after: seconds a dead holder's place stays vacant before a takeover
    documents: list[dict[str, Any]]  # the Workload, then the ConfigItems and Secrets it uses


class MemberTls(msgspec.Struct, kw_only=True):
    """The certificate of one member of a group's etcd (server and client of the group's peer and client traffic),
    signed by the group's own CA (gateway.registry.consensus_ca); sent to that member only."""

    ca: str  # PEM of the group's CA: the only issuer the group's etcd members trust
    cert: str  # PEM, with the hosts of the member's peer and client URLs as names
    key: str  # PEM of its private key


class FailoverPlan(msgspec.Struct, kw_only=True):
    """What the members of a group with a consensus store need to move apps off a dead member on their own."""

    version: str  # changes with anything else here
    group: str
    members: Annotated[list[GroupMember], msgspec.Meta(max_length=MAX_GROUP_MEMBERS)]
    placements: Annotated[list[FailoverPlacement], msgspec.Meta(max_length=MAX_FAILOVER_PLACEMENTS)]
    tls: MemberTls | None = None  # the receiving member's certificate (None: no plan, or a registry without it)

    def __repr__(self) -> str:  # never the member's key in a log line or a traceback
        return (f"FailoverPlan(version={self.version!r}, group={self.group!r}, members={len(self.members)}, "
                f"placements={len(self.placements)})")


class Takeover(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A placement a node took over in its group while the registry was away."""

    workload: Annotated[str, msgspec.Meta(max_length=600)]
    origin: Annotated[str, msgspec.Meta(max_length=253)]
    previous: Annotated[str, msgspec.Meta(max_length=253)]  # the node that held it
    at: float  # unix time of the takeover


Takeovers = Annotated[list[Takeover], msgspec.Meta(max_length=MAX_TAKEOVERS)]


class HeartbeatRequest(msgspec.Struct, kw_only=True):
    resource_version: str = ""
    info: dict[str, Any] = {}
    twins: DeviceReports | None = None  # devices whose twin changed since the last delivered report
    twins_complete: bool = False  # `twins` holds every device of the node: forget the others
    # the model and units of devices in `twins` whose description changed (registries before it ignore the field)
    described: DeviceDescriptions | None = None
    desired_version: int = 0  # the node has taken the registry's desired values up to this version
    desired_ack: DesiredAck | None = None
    workloads: WorkloadReports | None = None  # the node's registry-owned workloads, when they changed
    upgrade: UpgradeReport | None = None  # the state of the upgrade task the node was handed last
    routes: RouteReports | None = None  # the counters of the node's registry-owned routes, when they changed
    figures: AppFiguresList | None = None  # the resources of the node's app instances, when it sampled them anew
    allocatable: Allocatable | None = None  # what the node offers its apps (kept with the node's info)
    failover_version: str = ""  # the version of the group's failover plan the node has
    takeovers: Takeovers | None = None  # placements the node took over in its group while the registry was away
    # the events of the node's services it has not delivered yet (nodes before it send none, which is no event)
    service_events: ServiceEvents | None = None


# byte streams of service traffic between nodes: a node opens RELAY_STREAM to the registry ({"node": <target>}), the
# registry opens SERVICE_STREAM to the target ({"from": <node>}) and copies the bytes (TLS between the nodes)
RELAY_STREAM = "relay"
SERVICE_STREAM = "service"


class HeartbeatResponse(msgspec.Struct, kw_only=True):
    node: str
    resource_version: str
    heartbeat_interval: float
    documents: list[dict[str, Any]] | None = None  # only when resource_version differs from the node's
    desired: list[DesiredValue] | None = None  # desired values newer than the node's desired_version
    upgrade: UpgradeAssignment | None = None  # an upgrade task for the node to start
    # where the node dials the channel: "[:PORT]PATH" on the registry's host (a port of its own when the registry
    # has a separate channel listener), "off" when this registry has none, "" from registries before the channel
    channel: str = ""
    # the group's failover plan when the node's group runs a consensus store and the node's version differs
    failover: FailoverPlan | None = None


# --- messages for the node (`GET /api/v1/nodes/self/messages`, `POST …/messages/ack`) ------------------------------

MAX_MESSAGE = 1 << 20  # bytes of one message's payload


class NodeMessage(msgspec.Struct, kw_only=True):
    id: str
    namespace: str
    path: str
    payload: str  # base64


class AckRequest(msgspec.Struct, kw_only=True):
    ids: list[str]


# --- requests of the registry, carried as messages in LOGS_NAMESPACE, answered at `POST …/self/answers/<id>` -------

LOGS_NAMESPACE = "_fieldgate"  # not a valid resource namespace: never a user's rest route
LOGS_PATH = "logs"
WORKLOAD_LOGS_PATH = "workload-logs"
WORKLOAD_ACTION_PATH = "workload-action"
WORKLOAD_ACTIONS = ("stop", "start", "restart")
MAX_ANSWER = 8 << 20  # bytes of one answer
DEFAULT_TAIL = 100
MAX_TAIL = 1000


class NodeAnswer(msgspec.Struct, kw_only=True):
    records: list[LogEntry] = []
    cursor: int = 0
    more: bool = False
    skipped: int = 0
    error: str | None = None  # the node refused the query


class WorkloadLogRequest(msgspec.Struct, kw_only=True):
    workload: str  # <namespace>/<name>
    instance: str | None = None
    container: str | None = None  # one container of a pod
    tail: int = DEFAULT_TAIL


class WorkloadLogLine(msgspec.Struct, kw_only=True):
    seq: Seq
    ts: Timestamp
    instance: str
    stream: str
    line: str
    container: str = ""  # the container of a pod the line came from


class WorkloadLogAnswer(msgspec.Struct, kw_only=True):
    lines: list[WorkloadLogLine] = []
    cursor: int = 0
    error: str | None = None  # the node refused the request


class WorkloadActionRequest(msgspec.Struct, kw_only=True):
    workload: str  # <namespace>/<name>
    action: str  # stop, start or restart
    actor: str  # who asked at the registry, for the node's events and audit


class WorkloadActionAnswer(msgspec.Struct, kw_only=True):
    workload: str = ""
    action: str = ""
    changed: bool = False  # False: nothing to do (a start of a workload that was not stopped)
    status: str = ""  # the workload's status right after the action
    reason: str = ""
    version: int = 0
    instances: list[dict[str, Any]] = []  # id, state, pid: the instances right after the action
    error: str | None = None  # the node refused the request


AnyAnswer = NodeAnswer | WorkloadLogAnswer | WorkloadActionAnswer
ANSWERS: dict[str, type[AnyAnswer]] = {LOGS_PATH: NodeAnswer, WORKLOAD_LOGS_PATH: WorkloadLogAnswer,
                                       WORKLOAD_ACTION_PATH: WorkloadActionAnswer}


# --- files both ways (`/api/v1/nodes/self/files…` and `/api/v1/nodes/self/uploads…`, mutual TLS) -------------------

FILE_CHUNK = 1 << 20  # bytes of one chunk: what a dropped link costs again at most
MAX_FILE_CHUNK = 8 << 20  # the largest chunk either side takes
MAX_FILE_NAME = 255  # characters of a file name (one path element)
MAX_FILE_PATH = 1024  # characters of a destination path on a node
MAX_FILE_LABELS = 32
FILE_ID = re.compile(r"^[0-9a-f]{32}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CHUNK_SHA256 = "X-Chunk-SHA256"  # the header carrying a chunk's SHA-256 (hex), both ways
FILE_STATES = ("pending", "transferring", "done", "refused", "expired")

FileId = Annotated[str, msgspec.Meta(pattern=FILE_ID.pattern, description="32 hex digits")]
Sha256 = Annotated[str, msgspec.Meta(pattern=SHA256_HEX.pattern, description="SHA-256, 64 lower-case hex digits")]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FILE_NAME)]
ContentType = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$", max_length=127)]
FileLabels = Annotated[dict[Annotated[str, msgspec.Meta(min_length=1, max_length=63)],
                            Annotated[str, msgspec.Meta(max_length=253)]],
                       msgspec.Meta(max_length=MAX_FILE_LABELS)]


class FileOffer(msgspec.Struct, kw_only=True):
    """A file the registry has for the calling node (cloud → edge): the node fetches its bytes chunk by chunk."""

    id: FileId
    name: FileName
    path: Annotated[str, msgspec.Meta(max_length=MAX_FILE_PATH)]  # where in the node's files area, relative
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Sha256
    content_type: ContentType = "application/octet-stream"
    labels: FileLabels = {}
    expires_at: float = 0.0


class FileProgress(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A node's progress with a file offered to it: its written offset, and done or refused (with the reason)."""

    offset: Annotated[int, msgspec.Meta(ge=0)]
    state: Literal["transferring", "done", "refused"] = "transferring"
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] = ""
    bytes_received: Annotated[int, msgspec.Meta(ge=0)] = 0  # bytes the node took off the link for it so far


class UploadStart(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A file a node sends (edge → cloud): announced once, then its chunks from the offset the registry answers."""

    id: FileId
    name: FileName
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Sha256
    content_type: ContentType = "application/octet-stream"
    labels: FileLabels = {}


class UploadState(msgspec.Struct, kw_only=True):
    """How much of a file the registry holds (the acknowledged offset), and whether it is whole and verified."""

    id: str
    offset: int
    state: str  # transferring, done, refused
    reason: str = ""


# --- file bytes on the channel (gateway.filestream): one byte stream of kind FILE_STREAM per request ---------------

FILE_STREAM = "file"
FILE_PIECE = 64 << 10  # bytes of file data per piece on a stream, each followed by its SHA-256: what a cut costs
FILE_ACK = 4 << 20  # bytes a receiver writes between two fsyncs (and, at the registry, two acknowledgements)
MAX_FILE_REPLY = 4 << 20  # bytes of one JSON reply on a file stream
MAX_OFFER_WAIT = 60.0  # seconds a poll for files may wait at the registry
FILE_WINDOW = 512 << 10  # credit beyond STREAM_WINDOW the receiver of an uncapped transfer grants


class FileStreamRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The meta of a FILE_STREAM stream the node opens: what it asks. `offers` (waiting up to `wait` s), `get` (the
    bytes of file `id` from `offset`, as pieces), `progress`, `announce`, `status` and `put` (the node's pieces of
    file `id` from the offset the registry answers), as the HTTPS routes of the same names."""

    op: Literal["offers", "get", "progress", "announce", "status", "put"]
    id: FileId | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_OFFER_WAIT)] = 0.0
    progress: FileProgress | None = None
    start: UploadStart | None = None
    window: Annotated[int, msgspec.Meta(ge=0, le=FILE_WINDOW)] = 0  # credit the registry grants a put beyond
    # STREAM_WINDOW (the node asks for it when its bandwidth is not capped)


# --- the channel (one WebSocket over mutual TLS at CHANNEL_PATH; gateway.channel multiplexes it) --------------------
#
# Every WebSocket message is one binary msgpack frame, tagged by `t`. Pushes, heartbeats and answers carry a sequence
# number per direction and connection (`seq`) that the other side acknowledges once the frame is applied (`Ack`);
# what was not acknowledged when a connection drops is sent again on the next one, and both sides apply by their
# idempotence keys (resource version, desired version, message id, request id), so a repeat changes nothing. Byte
# streams carry data in frames of at most MAX_STREAM_CHUNK bytes, each side sending only as much as the other
# granted (`StreamCredit`), so a bulk stream never holds up a control frame for long.

CHANNEL_VERSION = 1
CHANNEL_PATH = "/api/v1/channel"
CHANNEL_OFF = "off"
MAX_CHANNEL_FRAME = MAX_HEARTBEAT + (64 << 10)  # bytes of one frame: a heartbeat with room for its envelope
MAX_STREAM_CHUNK = 16 << 10  # bytes of data in one stream frame
STREAM_WINDOW = 128 << 10  # bytes a side may send on a stream before the other grants more
MAX_STREAM_KIND = 64
MAX_STREAM_META = 16 << 10  # bytes of a stream's metadata, encoded


class ChannelFrame(msgspec.Struct, kw_only=True, tag_field="t"):
    """A frame of the channel; subclasses are tagged by their class name."""


class Hello(ChannelFrame, kw_only=True, tag="hello"):
    """The node's first frame: what it has, so the registry pushes only what is newer."""

    version: int = CHANNEL_VERSION
    resource_version: str = ""
    desired_version: int = 0


class Welcome(ChannelFrame, kw_only=True, tag="welcome"):
    """The registry's answer to Hello."""

    version: int = CHANNEL_VERSION
    node: str
    heartbeat_interval: float


class Refused(ChannelFrame, kw_only=True, tag="refused"):
    """The registry closes the channel: why (a revoked certificate, an unknown node)."""

    reason: str


class Heartbeat(ChannelFrame, kw_only=True, tag="heartbeat"):
    seq: int
    body: HeartbeatRequest


class HeartbeatAnswer(ChannelFrame, kw_only=True, tag="heartbeat-answer"):
    """The answer to a heartbeat: its `body`, or why the registry refused it (`refused`, with the HTTP `status` the
    same heartbeat gets over HTTPS, such as 429 for twin reports sooner than MIN_REPORT_INTERVAL allows); a refused
    heartbeat is taken as one that did not get through, and what it carried goes with the next one."""

    seq: int  # of the heartbeat answered (it acknowledges it)
    body: HeartbeatResponse | None = None
    refused: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None
    status: int = 200


class Push(ChannelFrame, kw_only=True, tag="push"):
    """What changed for the node at the registry: its documents (a new resource version), desired values newer than
    the node's, messages and requests (LOGS_NAMESPACE) waiting for it."""

    seq: int
    resource_version: str | None = None
    documents: list[dict[str, Any]] | None = None
    desired: list[DesiredValue] | None = None
    messages: list[NodeMessage] | None = None


class Ack(ChannelFrame, kw_only=True, tag="ack"):
    """A frame with `seq` was applied; for a Push, the node's desired acknowledgement rides along."""

    seq: int
    desired_ack: DesiredAck | None = None
    messages: list[str] = []  # ids of the messages the node has taken (durable in its outboxes)


class Answer(ChannelFrame, kw_only=True, tag="answer"):
    """The node's answer to a request of the registry (a message in LOGS_NAMESPACE): the JSON of an ANSWERS type."""

    seq: int
    request: str
    path: str
    body: bytes


class StreamOpen(ChannelFrame, kw_only=True, tag="stream-open"):
    stream: Annotated[int, msgspec.Meta(ge=1)]  # the node opens odd ids, the registry even ones
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STREAM_KIND)]
    meta: dict[str, Any] = {}


class StreamData(ChannelFrame, kw_only=True, tag="stream-data"):
    stream: int
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_STREAM_CHUNK)]


class StreamCredit(ChannelFrame, kw_only=True, tag="stream-credit"):
    stream: int
    credit: Annotated[int, msgspec.Meta(ge=1)]  # more bytes the other side may send


class StreamEnd(ChannelFrame, kw_only=True, tag="stream-end"):
    """No more data on the stream from this side; with `error`, the stream is aborted both ways."""

    stream: int
    error: str | None = None


AnyFrame = (Hello | Welcome | Refused | Heartbeat | HeartbeatAnswer | Push | Ack | Answer | StreamOpen | StreamData
            | StreamCredit | StreamEnd)
