"""The protocol config and the property visitor of OPC UA devices (checked when a file loads, without asyncua)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from gateway.resources.durations import Duration
from gateway.resources.schema import Base

SecurityPolicy = Literal["None", "Basic256Sha256"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
Login = Literal["anonymous", "username", "certificate"]
# The built-in scalar types a value can be written as; the node's own DataType is used when the visitor names none.
DataType = Literal[
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double",
    "String", "ByteString",
]
INTEGER_TYPES = frozenset({"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"})
ALL_MODEL_TYPES = frozenset({"int", "float", "double", "string", "boolean", "bytes"})

# ns=<index>; or nsu=<uri>; then i=<number>, s=<string>, g=<guid> or b=<base64> (OPC 10000-6 5.3.1.10)
_NODE_ID = re.compile(
    r"(?:ns=(?P<ns>\d{1,5});|nsu=(?P<nsu>[^;]+);)?"
    r"(?:i=(?P<i>\d{1,10})|s=(?P<s>.+)|g=(?P<g>[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12})"
    r"|b=(?P<b>[A-Za-z0-9+/]+={0,2}))",
    re.DOTALL,
)
_ENDPOINT = re.compile(r"opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:\d{1,5})?(/\S*)?")
_QUALIFIED_NAME = re.compile(r"(?:(?P<ns>\d{1,5}):)?(?P<name>[^/]+)")


@dataclass(frozen=True)
class NodeIdText:
    """A NodeId as written in a visitor, checked; the namespace by index or by URI."""

    text: str
    namespace_uri: str | None


def parse_node_id(text: str) -> NodeIdText:
    """Check the syntax of a NodeId (`ns=2;s=Line1.Temp`, `i=2258`, `ns=1;g=…`, `nsu=urn:x;s=…`); ValueError if bad."""
    match = _NODE_ID.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is no NodeId: expected [ns=<index>;|nsu=<uri>;] then i=<number>, s=<string>, "
                         "g=<guid> or b=<base64>, e.g. ns=2;s=Line1.Temp")
    if match["ns"] is not None and int(match["ns"]) > 65535:
        raise ValueError(f"{text!r}: the namespace index is above 65535")
    if match["i"] is not None and int(match["i"]) > 0xFFFFFFFF:
        raise ValueError(f"{text!r}: the numeric identifier is above 4294967295")
    return NodeIdText(text, match["nsu"])


def parse_browse_path(text: str) -> list[tuple[int, str]]:
    """`2:Line1/2:Temp` as (namespace index, name) pairs from the Objects folder; ValueError if bad."""
    elements: list[tuple[int, str]] = []
    for part in text.split("/"):
        match = _QUALIFIED_NAME.fullmatch(part)
        if match is None:
            raise ValueError(f"{text!r} is no browse path: expected names from the Objects folder separated by '/', "
                             "each <namespace index>:<name>, e.g. 2:Line1/2:Temp")
        index = int(match["ns"] or 0)
        if index > 65535:
            raise ValueError(f"{text!r}: the namespace index {index} is above 65535")
        elements.append((index, match["name"]))
    return elements


FilePath = Annotated[str, Meta(min_length=1, max_length=4096)]


class OpcuaConfig(Base, kw_only=True):
    """`protocol.config` of an `opcua` device."""

    endpoint: Annotated[str, Meta(max_length=2048, description="the server's endpoint URL, opc.tcp://HOST:PORT[/PATH]")]
    security_policy: Annotated[SecurityPolicy, Meta(description="None, or Basic256Sha256 (signed and maybe "
                                                                "encrypted messages, certificates both ways)")] = "None"
    security_mode: Annotated[SecurityMode | None, Meta(
        description="Sign or SignAndEncrypt (the default with a policy); None without one")] = None
    server_certificate: Annotated[FilePath | None, Meta(
        description="the server's certificate (DER or PEM): only a server holding it is accepted")] = None
    trusted_certificates: Annotated[FilePath | None, Meta(
        description="a folder of trusted certificates (DER or PEM): the server's own or its issuer's; default "
                    "<data dir>/opcua/trusted (a refused one is kept in <data dir>/opcua/rejected)")] = None
    certificate: Annotated[FilePath | None, Meta(
        description="the gateway's application certificate (DER or PEM); default: made on first use in "
                    "<data dir>/opcua/")] = None
    private_key: Annotated[FilePath | None, Meta(description="the key of `certificate` (PEM)")] = None
    login: Annotated[Login, Meta(description="how the session logs in")] = "anonymous"
    username: Annotated[Annotated[str, Meta(min_length=1, max_length=256)] | None, Meta(
        description="login: username; the user's name")] = None
    password: Annotated[Annotated[str, Meta(max_length=1024)] | None, Meta(
        description="login: username; the password")] = None
    password_file: Annotated[FilePath | None, Meta(
        description="login: username; a file whose first line is the password")] = None
    user_certificate: Annotated[FilePath | None, Meta(
        description="login: certificate; the user's certificate (default: the application certificate)")] = None
    user_private_key: Annotated[FilePath | None, Meta(description="the key of `user_certificate` (PEM)")] = None
    timeout: Annotated[float, Meta(gt=0, le=60, description="seconds to wait for one answer")] = 5.0
    publishing_interval: Annotated[Duration | None, Meta(
        description="how often the server sends subscription changes; default: the shortest sampling interval")
    ] = None

    def __post_init__(self) -> None:
        if not _ENDPOINT.fullmatch(self.endpoint):
            raise ValueError(f"endpoint: expected opc.tcp://HOST[:PORT][/PATH], got {self.endpoint[:100]!r}")
        if self.security_policy == "None":
            if self.security_mode not in (None, "None"):
                raise ValueError(f"security_mode: {self.security_mode} needs a security_policy, e.g. Basic256Sha256")
        elif self.security_mode == "None":
            raise ValueError(f"security_mode: None does not go with security_policy {self.security_policy}; "
                             "use Sign or SignAndEncrypt")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate: give certificate and private_key together")
        if self.server_certificate is not None and self.trusted_certificates is not None:
            raise ValueError("server_certificate: pin one certificate or trust a folder, not both")
        if self.login == "username":
            if self.username is None:
                raise ValueError("username: login username needs a username")
            if self.password is not None and self.password_file is not None:
                raise ValueError("password: give password or password_file, not both")
        elif self.username is not None or self.password is not None or self.password_file is not None:
            raise ValueError(f"username: applies to login: username, not login: {self.login}")
        if self.login == "certificate":
            if (self.user_certificate is None) != (self.user_private_key is None):
                raise ValueError("user_certificate: give user_certificate and user_private_key together")
        elif self.user_certificate is not None or self.user_private_key is not None:
            raise ValueError(f"user_certificate: applies to login: certificate, not login: {self.login}")
        if self.publishing_interval is not None and not 0.01 <= self.publishing_interval <= 3600:
            raise ValueError("publishing_interval: expected 10ms to 1h")

    @property
    def mode(self) -> SecurityMode:
        """The message security mode in force."""
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"


class OpcuaVisitor(Base, kw_only=True):
    """Where one property lives in the server's address space, and how its value comes."""

    node_id: Annotated[Annotated[str, Meta(max_length=4096)] | None, Meta(
        description="the variable's NodeId: ns=2;s=Line1.Temp, ns=3;i=1001, ns=1;g=<guid>, nsu=<uri>;s=…")] = None
    browse_path: Annotated[Annotated[str, Meta(max_length=4096)] | None, Meta(
        description="or its path from the Objects folder: 2:Line1/2:Temp")] = None
    mode: Annotated[Literal["subscription", "poll"], Meta(
        description="subscription: the server reports changes (monitored item); poll: read every collect_interval")
    ] = "subscription"
    sampling_interval: Annotated[Duration | None, Meta(
        description="subscription: how often the server samples the value; default: the collect_interval")] = None
    deadband: Annotated[float, Meta(ge=0, description="subscription: a change smaller than this is not reported")] = 0
    deadband_type: Annotated[Literal["absolute", "percent"], Meta(
        description="percent: of the variable's EURange")] = "absolute"
    data_type: Annotated[DataType | None, Meta(
        description="the type values are written as; default: the node's DataType")] = None

    def __post_init__(self) -> None:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("node_id: give either node_id or browse_path")
        try:
            if self.node_id is not None:
                parse_node_id(self.node_id)
            else:
                parse_browse_path(self.browse_path or "")
        except ValueError as exc:
            raise ValueError(f"{'node_id' if self.node_id is not None else 'browse_path'}: {exc}") from None
        if self.mode == "poll" and self.sampling_interval is not None:
            raise ValueError("sampling_interval: applies to mode: subscription, not poll")
        if self.mode == "poll" and self.deadband:
            raise ValueError("deadband: applies to mode: subscription, not poll")
        if self.sampling_interval is not None and self.sampling_interval > 3600:
            raise ValueError("sampling_interval: expected at most 1h")
        if self.deadband_type == "percent" and self.deadband > 100:
            raise ValueError(f"deadband: a percentage is at most 100, got {self.deadband:g}")

    @property
    def where(self) -> str:
        return self.node_id or f"browse path {self.browse_path}"


def model_types(visitor: OpcuaVisitor) -> frozenset[str]:
    """Model types a property read through this visitor may declare (any, unless the data type is named)."""
    data_type = visitor.data_type
    if data_type is None:
        return ALL_MODEL_TYPES
    if data_type == "Boolean":
        return frozenset({"boolean", "int"})
    if data_type in INTEGER_TYPES:
        return frozenset({"int", "float", "double"})
    if data_type in ("Float", "Double"):
        return frozenset({"float", "double"})
    if data_type == "String":
        return frozenset({"string"})
    return frozenset({"bytes"})
