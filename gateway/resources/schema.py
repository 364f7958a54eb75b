"""Resource documents: one schema for YAML files, the REST API and the registry (msgspec Structs)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.errors import ConfigError
from gateway.resources.durations import Duration

NAME_PATTERN = r"^[a-z0-9]+([-.][a-z0-9]+)*$"
Name = Annotated[
    str,
    Meta(
        pattern=NAME_PATTERN,
        max_length=253,
        description="lowercase letters, digits, '-' and '.', starting and ending alphanumeric, no two symbols in a row",
    ),
]
# A node name is also its certificate's common name (at most 64 characters, RFC 5280), a path segment of the
# registry API and a column of `registry nodes`: one DNS label's length, 63, fits them all.
NODE_NAME_MAX = 63
RESERVED_NODE_NAMES = frozenset({"self"})  # /api/v1/nodes/self/… is the calling node's own path
NODE_NAME_RULE = (f"expected 1 to {NODE_NAME_MAX} lowercase letters, digits, '-' and '.', starting and ending with a "
                  "letter or digit, no two symbols in a row")
PropertyName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)]
ModelType = Literal["int", "float", "double", "string", "boolean", "bytes"]
Access = Literal["ReadWrite", "ReadOnly"]


def check_node_name(name: str, field: str = "name") -> str:
    """`name` when it may name a node; ConfigError naming `field`, the name and the rule otherwise."""
    shown = repr(name) if len(name) <= 80 else f"{name[:40]!r}… ({len(name)} characters)"
    if name in RESERVED_NODE_NAMES:
        raise ConfigError(f"{field} {shown}: reserved (/api/v1/nodes/{name}/… is the calling node's own path)")
    if len(name) > NODE_NAME_MAX or not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(f"{field} {shown}: {NODE_NAME_RULE}")
    return name


ANNOTATIONS_MAX = 64
ANNOTATION_VALUE_MAX = 4096
AnnotationKey = Annotated[str, Meta(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                                            r"[A-Za-z0-9])?$", max_length=253,
                                    description="`[prefix/]name`, as Kubernetes annotation keys")]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Every schema object rejects unknown fields and takes keyword arguments only."""


class Document(Base, tag_field="kind", kw_only=True):
    """Fields every resource document carries."""

    name: Name
    namespace: Name = "default"
    labels: dict[str, str] = {}
    description: str = ""
    annotations: Annotated[dict[AnnotationKey, Annotated[str, Meta(max_length=ANNOTATION_VALUE_MAX)]], Meta(
        max_length=ANNOTATIONS_MAX, description="notes for people and tools (`team/owner: ...`), kept and shown, "
                                                "never acted on")] = {}

    @property
    def kind(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


_BYTE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}
_BYTES_PATTERN = re.compile(r"\s*(\d+)\s*(k|m|g|ki|mi|gi)?\s*", re.I)


class ByteSize(int):
    """A size in bytes, parsed from a number or a string with a unit: `64Mi`, `1Gi`, `500M`, `4096`."""

    @classmethod
    def parse(cls, raw: Any) -> ByteSize:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return cls(raw)
        if isinstance(raw, str) and (match := _BYTES_PATTERN.fullmatch(raw)):
            return cls(int(match[1]) * _BYTE_UNITS[(match[2] or "").lower()])
        raise ValueError(f"Expected a size like '64Mi', '1Gi', '500M' or a number of bytes, got {raw!r}")



# --- Gateway -------------------------------------------------------------------------------------------------


class HttpSettings(Base, kw_only=True):
    listen: Annotated[str, Meta(description="HOST:PORT of the local web UI and REST API")] = "127.0.0.1:8080"


class TopicAccess(Base, kw_only=True):
    """One rule of the embedded broker's access control: what a client may do on the topics a filter matches."""

    topic: Annotated[str, Meta(min_length=1, max_length=1024,
                               description="an MQTT topic filter (`+` one level, `#` the rest); `#` and `+` do not "
                                           "match topics starting with `$` (name `$hw/#` for the twin topics)")]
    access: Annotated[Literal["read", "write", "readwrite", "deny"], Meta(
        description="read: subscribe and receive; write: publish; deny: neither, even where another rule allows it")]


class SecretKeyRef(Base, kw_only=True):
    """One key of a Secret in the Gateway document's namespace."""

    secret: Name
    key: KeyName


class EventbusUser(Base, kw_only=True):
    """A client of the embedded broker: one of `password`, `password_file` or `password_secret`, and its rules."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", max_length=64,
                              description="the MQTT user name")]
    password: Annotated[Annotated[str, Meta(min_length=1)] | None, Meta(description="the password itself")] = None
    password_file: Annotated[str | None, Meta(description="absolute path of a file whose first line is the password "
                                                          "(read at start and on reload)")] = None
    password_secret: Annotated[SecretKeyRef | None, Meta(description="the key of a Secret that holds the password")
                               ] = None
    acl: Annotated[list[TopicAccess], Meta(description="what the user may do; anything no rule allows is denied")
                   ] = []


class EventbusSettings(Base, kw_only=True):
    url: Annotated[str, Meta(
        pattern=r"^(embedded|none|mqtts?://[^/\s]+)$",
        description="mqtt://host:port, mqtts://host:port, `embedded` (a broker run by the gateway) or `none`",
    )] = "embedded"
    embedded_listen: Annotated[str, Meta(description="HOST:PORT of the embedded broker")] = "127.0.0.1:1883"
    users: Annotated[list[EventbusUser], Meta(description="embedded broker: the users apps connect as (the gateway "
                                                          "has its own, made at every start)")] = []
    allow_anonymous: Annotated[bool | None, Meta(
        description="embedded broker: clients without a user name may connect (default: yes while no users are "
                    "listed, no once some are)")] = None
    anonymous_acl: Annotated[list[TopicAccess] | None, Meta(
        description="embedded broker: what anonymous clients may do when allowed (default: everything)")] = None
    username: Annotated[str | None, Meta(description="the gateway's user at an external broker (mqtt://, mqtts://)")
                        ] = None
    password: Annotated[str | None, Meta(description="the gateway's password at an external broker")] = None
    ca_file: Annotated[str | None, Meta(description="CA certificate (PEM) to trust, for mqtts://")] = None
    cert_file: Annotated[str | None, Meta(description="client certificate (PEM), for mqtts://")] = None
    key_file: Annotated[str | None, Meta(description="client key (PEM), for mqtts://")] = None
    telemetry_qos: Annotated[int, Meta(ge=0, le=1)] = 1
    outbox_max_messages: Annotated[int, Meta(ge=1000, description="oldest dropped beyond this")] = 1_000_000
    outbox_max_age: Annotated[Duration, Meta(description="older messages are dropped")] = Duration(7 * 86400)


class StoreSettings(Base, kw_only=True):
    history_max_age: Duration = Duration(7 * 86400)
    history_max_bytes: Annotated[int, Meta(ge=1 << 20, description=(
        "bytes of the store file in use at most; beyond, the devices whose reports use the most lose their oldest "
        "first, so one device's flood never costs another device's history"))] = 256 << 20
    flush_interval: Annotated[Duration, Meta(description=(
        "0 (the default): reports and outbox messages are committed as soon as the previous commit is done, with "
        "what was queued meanwhile (under load, one commit every 10ms at most); longer: at most one commit every "
        "interval (fewer, larger writes, for a card that wears, at the cost of that much more latency to the "
        "sinks)"))] = Duration(0)
    sync: Annotated[Literal["full", "normal"], Meta(description=(
        "full (the default): each commit is on the disk before reports and outbox messages count as stored, so a "
        "power cut loses none of them; normal: commits reach the disk at checkpoints, so a power cut can lose the "
        "last seconds (the store stays consistent, and a crash of the gateway alone loses nothing either way), for "
        "a card that wears or a disk whose flushes are slow; applies at start"))] = "full"


class FilesSettings(Base, kw_only=True):
    """Files both ways with the registry: the files area (`<data dir>/files`) and the node's file outbox."""

    quota: Annotated[ByteSize, Meta(description="bytes the files area may hold; a file the registry sends that "
                                                "would pass it is refused")] = ByteSize(1 << 30)
    max_upload: Annotated[ByteSize, Meta(description="the largest file a local app may put into the outbox "
                                                     "(`PUT /api/v1/files/<name>`, the outbox folder)")
                          ] = ByteSize(1 << 30)
    outbox_quota: Annotated[ByteSize, Meta(description="bytes of files waiting in the outbox at most")
                            ] = ByteSize(4 << 30)
    bandwidth: Annotated[ByteSize | None, Meta(description="bytes a second file transfers may use, both ways "
                                                           "together (`2M` = 2 MB/s); none: no cap")] = None
    outbox_folder: Annotated[str | None, Meta(description="an absolute path whose files go to the registry (default "
                                                          "`<data dir>/file-outbox`)")] = None
    outbox_poll: Annotated[Duration, Meta(description="how often the outbox folder is looked at")] = Duration(1.0)


AcceleratorName = Annotated[str, Meta(
    pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=253,
    description="`vendor-domain/name`, e.g. `nvidia.com/gpu`, `huawei.com/Ascend310`")]
AcceleratorCount = Annotated[int, Meta(ge=0, le=1024)]
HostPath = Annotated[str, Meta(pattern=r"^/", min_length=1, max_length=1024, description="an absolute path")]
CDI_DIRS = ["/etc/cdi", "/var/run/cdi"]


class WorkloadSettings(Base, kw_only=True):
    """What the node lets its workloads use."""

    host_path_prefixes: Annotated[list[HostPath], Meta(max_length=64, description=(
        "host paths workloads may mount (a volume's `host_path` must lie under one); none: no host paths"))] = []
    accelerators: Annotated[dict[AcceleratorName, AcceleratorCount], Meta(max_length=64, description=(
        "accelerators this node offers, by name and count, besides those its CDI specs describe"))] = {}
    cdi_dirs: Annotated[list[HostPath], Meta(max_length=16, description=(
        "directories of CDI spec files (JSON or YAML); each spec's `kind` is an accelerator, its devices the count"
    ))] = msgspec.field(default_factory=lambda: list(CDI_DIRS))


ConsensusUrl = Annotated[str, Meta(pattern=r"^https://[A-Za-z0-9.\-\[\]:]{1,255}:[0-9]{1,5}$", max_length=300)]


class ConsensusSettings(Base, kw_only=True):
    """The node's etcd member of its group, for offline failover (every node of the group sets it, or none does).

    While the group is cut off from the registry its members still move apps off a dead member."""

    engine: Annotated[Literal["etcd"], Meta(description="the consensus store the group's gateways run")] = "etcd"
    peer_url: Annotated[ConsensusUrl, Meta(description=(
        "where the other members reach this node's etcd member (`https://HOST:PORT`; the node listens there; mutual "
        "TLS with certificates from the group's CA at the registry, whose names are the hosts of both URLs)"))]
    client_url: Annotated[ConsensusUrl, Meta(description="where the gateways reach this node's etcd member for "
                                                         "leases and placements (`https://HOST:PORT`, mutual TLS)")]
    lease_ttl: Annotated[Duration, Meta(description="how long a member that stopped renewing its lease keeps its "
                                                    "apps: the others take them over after that")] = Duration(10.0)
    binary: Annotated[str, Meta(min_length=1, max_length=4096, description="the etcd program")] = "etcd"


class ServiceSettings(Base, kw_only=True):
    """How the node serves Services: a DNS responder, a proxy per service port, direct streams from other nodes (a
    change applies at a reload: what it concerns listens anew)."""

    addresses: Annotated[str, Meta(pattern=r"^\d{1,3}(\.\d{1,3}){3}/(1[6-9]|2[0-9]|30)$", description=(
        "an IPv4 network (loopback by default) whose addresses the services' proxies listen on, one per service; its "
        "first address is the DNS responder's"))] = "127.77.0.0/16"
    dns_port: Annotated[int, Meta(ge=0, le=65535, description=(
        "the DNS responder's port (UDP and TCP) on the first address of `addresses` (in a container's own network "
        "namespace, a bridge network's, it answers at 53 over UDP whatever this is); 0: no DNS responder"))] = 53
    mesh_listen: Annotated[str, Meta(max_length=300, description=(
        "HOST:PORT where other nodes of the fleet open direct streams (mutual TLS with the nodes' certificates); "
        "`none`: other nodes reach this node's instances through the registry relay only"))] = "none"
    advertise: Annotated[Annotated[str, Meta(max_length=300)] | None, Meta(description=(
        "HOST:PORT other nodes dial for direct streams (default: the first interface address with `mesh_listen`'s "
        "port)"))] = None
    connect_timeout: Annotated[Duration, Meta(description="how long a direct connection to another node may take "
                                                          "before the relay is used")] = Duration(1.0)
    udp_idle: Annotated[Duration, Meta(description="a UDP client's flow ends after this long without datagrams")
                        ] = Duration(30.0)


class Gateway(Document, tag="Gateway", kw_only=True):
    """Node settings; read from the local configuration only."""

    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    eventbus: EventbusSettings = msgspec.field(default_factory=EventbusSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    files: FilesSettings = msgspec.field(default_factory=FilesSettings)
    workloads: WorkloadSettings = msgspec.field(default_factory=WorkloadSettings)
    consensus: Annotated[ConsensusSettings | None, Meta(description=(
        "offline failover in the node's group (none: failover only at the registry, as a group without it)"))] = None
    services: ServiceSettings = msgspec.field(default_factory=ServiceSettings)


# --- Device models and devices --------------------------------------------------------------------------------


# The longest value a string (characters) or bytes property holds unless its model says otherwise, and the most a
# model may allow: every value travels in reports, the history, outboxes and heartbeats, many times over.
STRING_MAX_LENGTH = 1024
BYTES_MAX_LENGTH = 4096
VALUE_MAX_LENGTH = 65536


class PropertyModel(Base, kw_only=True):
    """A property of a device model; numbers are finite (NaN and infinities are no value), strings and bytes at most
    max_length long."""

    name: PropertyName
    type: ModelType
    access: Access = "ReadOnly"
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    max_length: Annotated[Annotated[int, Meta(ge=1, le=VALUE_MAX_LENGTH)] | None, Meta(
        description=f"string: characters, bytes: bytes (default {STRING_MAX_LENGTH} and {BYTES_MAX_LENGTH}); longer "
                    "desired values are refused, longer readings have bad quality")] = None
    description: str = ""


def value_limit(model: PropertyModel) -> int:
    """The most characters (string) or bytes (bytes) a value of the property may have."""
    if model.max_length is not None:
        return model.max_length
    return BYTES_MAX_LENGTH if model.type == "bytes" else STRING_MAX_LENGTH


class DeviceModel(Document, tag="DeviceModel", kw_only=True):
    protocol: str = ""
    properties: list[PropertyModel] = []


class ProtocolRef(Base, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    config: dict[str, Any] = {}


class DeviceProperty(Base, kw_only=True):
    name: PropertyName
    collect_interval: Duration = Duration(1.0)
    report_interval: Duration | None = None
    desired: Any = None
    visitor: dict[str, Any] = {}


class Device(Document, tag="Device", kw_only=True):
    model: Name | None = None
    profile: str | None = None
    protocol: ProtocolRef
    timeout: Annotated[Duration, Meta(description="budget for one poll cycle of this device; for a device that sends "
                                                  "its values itself (mqtt), the silence after which it is offline")
                       ] = Duration(3.0)
    node: Name | None = None
    properties: list[DeviceProperty] = []


# --- Message endpoints and routes ----------------------------------------------------------------------------

EndpointTypeName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]*$", max_length=63, description=(
    "built in: `bus`, `eventbus`, `rest`, `servicebus`, `mqtt`, `http`; or one a plugin serves (`fieldgate plugins`)"))]


class PlacedDocument(Document, kw_only=True):
    """Where the registry sends an Endpoint or a Route: a node, the nodes whose labels match, the nodes of groups
    (any that is set; none: nowhere). A node ignores these fields: the registry removes them when it sends the
    document."""

    node: Annotated[Name | None, Meta(description="at the registry: send to this node")] = None
    node_selector: Annotated[dict[str, str], Meta(description="at the registry: send to the nodes of the "
                                                              "workspace whose labels have these values")] = {}
    groups: Annotated[list[Name], Meta(description="at the registry: send to the nodes of these node groups")] = []


class Endpoint(PlacedDocument, tag="Endpoint", kw_only=True):
    """Where messages come from or go to; each type takes its own properties (see "Endpoint types" below)."""

    type: EndpointTypeName
    properties: Annotated[dict[str, Any], Meta(description="the properties of the endpoint's type, checked at "
                                                           "load against that type's schema")] = {}


class Route(PlacedDocument, tag="Route", kw_only=True):
    """Messages from a source endpoint and resource (`topic` or `path`) to a target endpoint and resource
    (`topic`, `path` or `resource` URL); `{node}`, `{namespace}`, `{device}` and `{topic}` fill target topics. At the
    registry, a Route sent to a node takes its source and target Endpoints along, wherever they are placed."""

    source: Annotated[Name, Meta(description=(
        "an Endpoint of the namespace; at the registry it must be there too, and goes to every node the Route goes "
        "to (applying a Route whose Endpoints are not at the registry is refused)"))]
    source_resource: dict[str, str] = {}
    target: Annotated[Name, Meta(description="an Endpoint of the namespace; at the registry, as `source`")]
    target_resource: dict[str, str] = {}


# --- Edge apps: workloads, config items and secrets -----------------------------------------------------------

KeyName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$", max_length=253)]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=253)]
RuntimeName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]*$", max_length=63,
                                  description="`process`, `container` or a runtime a plugin provides")]
Port = Annotated[int, Meta(ge=1, le=65535)]


class ValueRef(Base, kw_only=True):
    """One key of a ConfigItem or a Secret in the workload's namespace: give `config_item` or `secret`."""

    config_item: Name | None = None
    secret: Name | None = None
    key: KeyName


class EnvFrom(ValueRef, kw_only=True):
    name: Annotated[EnvName, Meta(description="the environment variable")]


class FileFrom(ValueRef, kw_only=True):
    path: Annotated[str, Meta(min_length=1, max_length=1024,
                              description="relative path of the file in the instance's files directory")]


class PortMapping(Base, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]*$", max_length=63)] = "http"
    container_port: Annotated[Port | None, Meta(description="port inside the container (container runtimes)")] = None
    host_port: Annotated[int, Meta(ge=0, le=65535, description="0: a free port per instance, given to the app "
                                                                "as PORT / FIELDGATE_PORT_<NAME>")] = 0
    protocol: Literal["tcp", "udp"] = "tcp"


class Limits(Base, kw_only=True):
    memory: Annotated[ByteSize | None, Meta(description="bytes or `64Mi`, `1Gi`; above it the app is stopped "
                                                         "(status oom)")] = None
    cpu: Annotated[float, Meta(gt=0, le=1024, description="cores, e.g. 0.5")] | None = None


class Requests(Base, kw_only=True):
    """What each instance needs of its node, reserved by the registry when it places the workload: it goes only to a
    node whose reported allocatable, less what is placed there already, still holds it (accelerators are requested
    by the Workload's `accelerators`)."""

    memory: Annotated[ByteSize | None, Meta(description="bytes or `64Mi`, `1Gi` each instance needs")] = None
    cpu: Annotated[float, Meta(gt=0, le=1024, description="cores each instance needs, e.g. 0.25")] | None = None


class HealthCheck(Base, kw_only=True):
    """Gates `ready`; after `failure_threshold` failures in a row the instance is unhealthy and restarted."""

    type: Literal["http", "tcp", "exec"]
    path: Annotated[str, Meta(description="http: the path to GET; 2xx and 3xx are healthy")] = "/"
    port: Annotated[int | str | None, Meta(description="http, tcp: a port number or the name of a port")] = None
    command: Annotated[list[str], Meta(description="exec: healthy when it exits 0")] = []
    interval: Duration = Duration(5.0)
    timeout: Duration = Duration(1.0)
    failure_threshold: Annotated[int, Meta(ge=1, le=100)] = 3
    initial_delay: Duration = Duration(0.0)


class DeviceMapping(Base, kw_only=True):
    """A host device the app may use: passed to a container (`--device`), checked for a process."""

    path: Annotated[str, Meta(pattern=r"^/dev/[^\x00]*$", max_length=256, description="the host device, e.g. "
                                                                                       "`/dev/ttyUSB0`")]
    container_path: Annotated[Annotated[str, Meta(pattern=r"^/dev/[^\x00]*$", max_length=256)] | None, Meta(
        description="where a container sees it (default: the same path)")] = None
    permissions: Annotated[str, Meta(pattern=r"^(?!.*(.).*\1)[rwm]{1,3}$", description=(
        "`r` read, `w` write, `m` mknod (containers), in any order"))] = "rwm"


Capability = Annotated[str, Meta(pattern=r"^(CAP_)?[A-Z][A-Z0-9_]{0,31}$|^ALL$", description=(
    "a Linux capability, e.g. `NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`"))]
Id = Annotated[int, Meta(ge=0, le=4294967294)]


class Capabilities(Base, kw_only=True):
    add: Annotated[list[Capability], Meta(max_length=64)] = []
    drop: Annotated[list[Capability], Meta(max_length=64)] = []


class SecuritySettings(Base, kw_only=True):
    """How the app runs: containers take all of these; processes run_as_user and run_as_group."""

    privileged: Annotated[bool, Meta(description="containers: every device and capability of the host (only "
                                                 "admins may set it)")] = False
    run_as_user: Annotated[Id | None, Meta(description="the numeric user id the app runs as")] = None
    run_as_group: Annotated[Id | None, Meta(description="the numeric group id the app runs as")] = None
    capabilities: Annotated[Capabilities | None, Meta(description="containers: capabilities added and dropped")
                            ] = None
    read_only_root_filesystem: Annotated[bool, Meta(description="containers: the image's filesystem is read-only "
                                                                "(volumes stay as mounted)")] = False


class Volume(Base, kw_only=True):
    """One volume, mounted at `mount_path`: give `host_path`, `persistent` or `scratch`."""

    name: Annotated[str, Meta(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description=(
        "the volume's name; a process finds it at $FIELDGATE_VOLUME_<NAME>"))]
    mount_path: Annotated[Annotated[str, Meta(pattern=r"^/", max_length=1024)] | None, Meta(
        description="containers: where it is mounted (processes get its host directory in the environment)")] = None
    read_only: bool = False
    host_path: Annotated[HostPath | None, Meta(description=(
        "a directory or file of the node, under one of its Gateway's `workloads.host_path_prefixes`"))] = None
    persistent: Annotated[bool, Meta(description=(
        "a named volume kept in the data dir (outside the upgrade slots): it survives updates, rollbacks, "
        "restarts and the workload's deletion; shared by the workload's instances"))] = False
    scratch: Annotated[bool, Meta(description="empty space for one instance, removed when the instance goes")
                       ] = False


class LifecycleHook(Base, kw_only=True):
    """A command run in the app (`exec`) or a request to it (`http`); its outcome and output are an event."""

    type: Literal["exec", "http"]
    command: Annotated[list[Annotated[str, Meta(max_length=4096)]], Meta(max_length=256, description=(
        "exec: the command (in the container for the container runtime)"))] = []
    path: Annotated[str, Meta(pattern=r"^/", max_length=1024, description="http: the path to GET")] = "/"
    port: Annotated[int | Annotated[str, Meta(max_length=63)] | None, Meta(
        description="http: a port number or the name of a port")] = None
    timeout: Annotated[Duration, Meta(description="the hook is stopped after this")] = Duration(10.0)


class Lifecycle(Base, kw_only=True):
    post_start: Annotated[LifecycleHook | None, Meta(description="run once the instance has started")] = None
    pre_stop: Annotated[LifecycleHook | None, Meta(description="run before the instance is stopped (before "
                                                               "SIGTERM); its timeout counts apart from stop_grace")
                        ] = None


ContainerName = Annotated[str, Meta(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description=(
    "unique among the workload's containers and init containers"))]


class VolumeMount(Base, kw_only=True):
    """One of the workload's `volumes`, mounted into one container of a pod."""

    name: Annotated[str, Meta(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
                              description="a volume of the workload's `volumes`")]
    mount_path: Annotated[str, Meta(pattern=r"^/", max_length=1024, description="where this container sees it")]
    read_only: bool = False


class Container(Base, kw_only=True):
    """One container of a pod: its image and command, what it publishes, checks, limits, mounts and security."""

    name: ContainerName
    image: Annotated[str, Meta(min_length=1, max_length=512)]
    command: Annotated[list[Annotated[str, Meta(max_length=4096)]], Meta(max_length=256, description=(
        "the entrypoint (default: the image's)"))] = []
    args: Annotated[list[Annotated[str, Meta(max_length=4096)]], Meta(max_length=256)] = []
    env: Annotated[dict[EnvName, str], Meta(description="set over the workload's env, for this container")] = {}
    working_dir: Annotated[str, Meta(pattern=r"^/", max_length=1024)] | None = None
    ports: Annotated[list[PortMapping], Meta(max_length=64, description=(
        "published by the pod; names unique across its containers"))] = []
    health: Annotated[HealthCheck | None, Meta(description=(
        "app containers: the instance is ready once every container's check passes; a container that fails it "
        "is restarted alone"))] = None
    limits: Limits = msgspec.field(default_factory=Limits)
    volume_mounts: Annotated[list[VolumeMount], Meta(max_length=64)] = []
    security: SecuritySettings | None = None

    @property
    def secured(self) -> SecuritySettings:
        return self.security or SecuritySettings()


Percentage = Annotated[str, Meta(pattern=r"^(100|[1-9]?[0-9])%$", description="a share of `replicas`, `25%`")]


def _strategy_count(value: int | str, replicas: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    share = int(value[:-1]) * replicas
    return -(-share // 100) if round_up else share // 100


class Strategy(Base, kw_only=True):
    """How an update replaces a node's instances: `Recreate` stops all, then starts; `RollingUpdate` rolls in bounds.

    `RollingUpdate` starts at most `max_surge` instances beyond `replicas` and lets at most `max_unavailable` be
    missing while it goes (a new one must be ready before an old one is stopped for it)."""

    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    max_surge: Annotated[Annotated[int, Meta(ge=0, le=100)] | Percentage | None, Meta(description=(
        "RollingUpdate: instances started beyond `replicas`, a number or a percentage of them like `25%` (rounds up); "
        "default 1"))] = None
    max_unavailable: Annotated[Annotated[int, Meta(ge=0, le=100)] | Percentage | None, Meta(description=(
        "RollingUpdate: instances that may be missing, a number or a percentage of `replicas` like `25%` (rounds "
        "down); default 0"))] = None

    def __post_init__(self) -> None:
        if self.type == "Recreate" and (self.max_surge is not None or self.max_unavailable is not None):
            raise ValueError("max_surge and max_unavailable are for type RollingUpdate, not Recreate")
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%", None):
            raise ValueError("max_surge and max_unavailable cannot both be 0 (the update could not make a step)")

    def bounds(self, replicas: int) -> tuple[int, int]:
        """(surge, unavailable) in instances for `replicas`; at least one of them is 1 or more."""
        surge = _strategy_count(1 if self.max_surge is None else self.max_surge, replicas, round_up=True)
        unavailable = _strategy_count(0 if self.max_unavailable is None else self.max_unavailable, replicas,
                                      round_up=False)
        return (surge, unavailable) if surge or unavailable else (0, 1)


class Workload(Document, tag="Workload", kw_only=True):
    """An edge app run on the node by a runtime: `process` (built in), `container` or one a plugin provides."""

    runtime: RuntimeName = "process"
    command: Annotated[list[str], Meta(description="the program and its arguments (process: required)")] = []
    image: Annotated[str | None, Meta(description="the image (container runtimes)")] = None
    image_pull_policy: Annotated[Literal["Always", "IfNotPresent", "Never"], Meta(
        description="container runtimes: pull the image before every start, only when it is missing (so a node "
                    "keeps working without its image registry), or never")] = "IfNotPresent"
    args: list[str] = []
    env: dict[EnvName, str] = {}
    env_from: list[EnvFrom] = []
    files: list[FileFrom] = []
    working_dir: str | None = None
    network: Annotated[Literal["ports", "host", "none"], Meta(
        description="`ports`: a network of its own (a bridge) with the mapped ports published, where the node's "
                    "services and their DNS names reach it too; `host`: the node's network; `none`")] = "ports"
    ports: list[PortMapping] = []
    limits: Limits = msgspec.field(default_factory=Limits)
    requests: Annotated[Requests | None, Meta(description=(
        "what each instance needs of its node (cpu, memory); the registry places the workload only where it fits"))
    ] = None
    restart: Literal["always", "on-failure", "never"] = "always"
    restart_delay: Annotated[Duration, Meta(description="first delay; doubles per restart up to restart_delay_max")
                             ] = Duration(1.0)
    restart_delay_max: Duration = Duration(300.0)
    health: HealthCheck | None = None
    replicas: Annotated[int, Meta(ge=0, le=100)] = 1
    stop_grace: Annotated[Duration, Meta(description="SIGTERM, then SIGKILL after this")] = Duration(10.0)
    node: Annotated[Name | None, Meta(description="run on this node only")] = None
    node_selector: Annotated[dict[str, str], Meta(description="run on nodes whose labels have these values")] = {}
    devices: Annotated[list[DeviceMapping], Meta(max_length=64, description="host devices the app uses")] = []
    accelerators: Annotated[dict[AcceleratorName, Annotated[int, Meta(ge=1, le=1024)]], Meta(
        max_length=16, description="accelerators each instance needs, by name and count; the registry places the "
                                   "workload only where they are free")] = {}
    security: SecuritySettings | None = None
    volumes: Annotated[list[Volume], Meta(max_length=64)] = []
    lifecycle: Lifecycle | None = None
    strategy: Annotated[Strategy | None, Meta(description=(
        "how an update replaces the instances; none: Recreate for one replica, RollingUpdate (max_surge 1, "
        "max_unavailable 0) for more"))] = None
    containers: Annotated[list[Container], Meta(max_length=16, description=(
        "container runtime: several containers run as one pod (one network: they reach each other on localhost; "
        "the pod publishes their ports), instead of `image`/`command`/`args`"))] = []
    init_containers: Annotated[list[Container], Meta(max_length=8, description=(
        "container runtime: run in order, each to exit code 0, before the app containers start"))] = []

    # None when not given, so the spec (and its version) of a workload that uses none of them stays as it was
    @property
    def secured(self) -> SecuritySettings:
        return self.security or SecuritySettings()

    @property
    def hooks(self) -> Lifecycle:
        return self.lifecycle or Lifecycle()

    @property
    def is_pod(self) -> bool:
        """Runs `containers` (after its `init_containers`) as a pod rather than one `image`."""
        return bool(self.containers)

    def privileged_at(self) -> str | None:
        """The field path of the first `privileged: true` of the workload or one of its containers, or None."""
        if self.secured.privileged:
            return "$.security.privileged"
        for field, group in (("containers", self.containers), ("init_containers", self.init_containers)):
            for i, container in enumerate(group):
                if container.secured.privileged:
                    return f"$.{field}[{i}].security.privileged"
        return None

    @property
    def all_ports(self) -> list[PortMapping]:
        """The ports of the workload and of its containers: what each instance publishes."""
        return [*self.ports, *(port for container in self.containers for port in container.ports)]


class ConfigItem(Document, tag="ConfigItem", kw_only=True):
    """Key/values for workloads, as environment variables or files."""

    data: dict[KeyName, str] = {}


class Secret(Document, tag="Secret", kw_only=True):
    """Key/values like ConfigItem, encrypted at rest on the node and masked by the API."""

    data: dict[KeyName, str] = {}


class GroupOverride(Base, kw_only=True):
    """One node group of a BatchWorkload, with what its nodes run differently from the template."""

    group: Annotated[Name, Meta(description="a node group of the registry")]
    replicas: Annotated[Annotated[int, Meta(ge=0, le=100)] | None,
                        Meta(description="instances per node (default: the template's)")] = None
    image: Annotated[str | None, Meta(description="replaces the template's image")] = None
    image_tag: Annotated[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")] | None,
                         Meta(description="replaces the tag of the image")] = None
    command: Annotated[list[str] | None, Meta(description="replaces the template's command")] = None
    args: Annotated[list[str] | None, Meta(description="replaces the template's args")] = None
    env: Annotated[dict[EnvName, str], Meta(description="set over the template's env")] = {}


class Failover(Base, kw_only=True):
    """Moves a node's instances to another node of its group that has room for them: when the node has been offline
    for `after`, or when they have kept failing on it (failed, restarting) for `after` while it is healthy."""

    after: Annotated[Duration, Meta(description="how long a node of the group may be offline, or its instances keep "
                                                "failing there, before they move to another node of the group that "
                                                "fits them")] = Duration(30.0)
    move_back: Annotated[bool, Meta(description="move them back when the node returns (else they stay)")] = True
    avoid_for: Annotated[Duration, Meta(description="how long instances moved away from a node they kept failing "
                                                    "on stay away from it (no flapping back)")] = Duration(3600.0)


class BatchWorkload(Document, tag="BatchWorkload", kw_only=True):
    """A workload template deployed by the registry to node groups: one Workload `<name>.<node>` per node."""

    template: Annotated[dict[str, Any], Meta(description="the fields of a Workload but kind, name, namespace, node "
                                                         "and node_selector")]
    groups: Annotated[list[GroupOverride], Meta(min_length=1)]
    failover: Failover | None = None


# --- Services: workload instances across the fleet behind one name -------------------------------------------

ServiceName = Annotated[str, Meta(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63, description=(
    "one DNS label: lowercase letters, digits and '-', starting with a letter (it names the service in DNS and in "
    "`<NAME>_SERVICE_HOST`)"))]
ServicePortName = Annotated[str, Meta(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
MAX_SERVICE_PORTS = 32
MAX_SERVICE_ENDPOINTS = 1000


class ServicePort(Base, kw_only=True):
    """One port of a service: apps call `<service>:<port>`; the proxy passes it on to `target_port` of an instance."""

    name: Annotated[ServicePortName | None, Meta(description="required when the service has more than one port")
                    ] = None
    port: Annotated[Port, Meta(description="the port apps call on the service's address")]
    target_port: Annotated[Port | ServicePortName | None, Meta(description=(
        "the instances' port: a number or the name of one of the workload's `ports` (default: the same number as "
        "`port`)"))] = None
    protocol: Literal["TCP", "UDP"] = "TCP"


class ServiceEndpoint(Base, kw_only=True):
    """One instance behind a service, as the registry computes it from placements and readiness."""

    node: Name
    instance: Annotated[str, Meta(max_length=300)]
    address: Annotated[str, Meta(max_length=300, description="HOST:PORT where the node takes direct streams "
                                                             "(empty: relay only)")] = ""
    ready: bool = False
    ports: Annotated[dict[Annotated[str, Meta(max_length=63)], Port], Meta(max_length=MAX_SERVICE_PORTS, description=(
        "the instance's port on its node for each service port, by the service port's name (or its number)"))] = {}


class Service(Document, tag="Service", kw_only=True):
    """Workload instances of the fleet behind one name: apps call `<name>.<namespace>.svc` (or `<name>`)."""

    name: ServiceName
    selector: Annotated[dict[str, str], Meta(max_length=32, description=(
        "the workloads whose labels have these values (give this or `workload`)"))] = {}
    workload: Annotated[Name | None, Meta(description="the workload of the namespace behind the service")] = None
    ports: Annotated[list[ServicePort], Meta(min_length=1, max_length=MAX_SERVICE_PORTS)]
    session_affinity: Annotated[Literal["None", "ClientIP"], Meta(description=(
        "ClientIP: the connections of one client address go to the same instance while it is ready"))] = "None"
    session_affinity_timeout: Annotated[Duration, Meta(description="ClientIP: how long a client is pinned after "
                                                                   "its last connection")] = Duration(10800.0)
    load_balancing: Literal["round-robin", "random"] = "round-robin"
    prefer: Annotated[Literal["local", "any"], Meta(description=(
        "local: a ready instance on this node first; any: every ready instance of the fleet alike"))] = "local"
    endpoints: Annotated[list[ServiceEndpoint], Meta(max_length=MAX_SERVICE_ENDPOINTS, description=(
        "set by the registry (the instances in the fleet and their readiness); ignored when applied"))] = []

    def __post_init__(self) -> None:
        if bool(self.selector) == (self.workload is not None):
            raise ValueError("give either `selector` or `workload`")
        seen: set[tuple[int, str]] = set()
        names: set[str] = set()
        for i, port in enumerate(self.ports):
            if len(self.ports) > 1 and port.name is None:
                raise ValueError(f"ports[{i}].name is required when the service has more than one port")
            if port.name is not None and port.name in names:
                raise ValueError(f"ports[{i}].name {port.name!r} is used twice")
            if (port.port, port.protocol) in seen:
                raise ValueError(f"ports[{i}]: port {port.port}/{port.protocol} is listed twice")
            names.add(port.name or "")
            seen.add((port.port, port.protocol))


AnyDocument = (Gateway | DeviceModel | Device | Endpoint | Route | Workload | ConfigItem | Secret | BatchWorkload
               | Service)
KINDS: dict[str, type[Document]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (Gateway, DeviceModel, Device, Endpoint, Route, Workload, ConfigItem, Secret, BatchWorkload, Service)
}


def non_finite_numbers(raw: Any, base_path: str = "$") -> list[tuple[str, float]]:
    """(field path, value) of every NaN or infinity anywhere in a raw document: no field of any kind (a minimum, a
    desired value, a visitor's scale or offset, a deadband) takes one, and YAML writes them easily (`.nan`, `.inf`).
    Walked without recursion: a document may be nested deeply on purpose."""
    found: list[tuple[str, float]] = []
    stack: list[tuple[str, Any]] = [(base_path, raw)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float):
            if node - node != 0.0:
                found.append((path, node))
        elif isinstance(node, dict):
            stack.extend((f"{path}.{key}", value) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((f"{path}[{index}]", value) for index, value in enumerate(node))
    return sorted(found)


def dec_hook(target: type, raw: Any) -> Any:
    """msgspec hook for the custom types of the schema."""
    if target is Duration:
        return Duration.parse(raw)
    if target is ByteSize:
        return ByteSize.parse(raw)
    raise NotImplementedError(f"no decoder for {target!r}")


def enc_hook(value: Any) -> Any:
    if isinstance(value, Duration):
        return float(value)
    if isinstance(value, ByteSize):
        return int(value)
    raise NotImplementedError(f"no encoder for {type(value)!r}")
