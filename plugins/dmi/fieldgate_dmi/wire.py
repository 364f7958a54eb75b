"""KubeEdge's DMI v1beta1 on the wire: its messages and services, built from descriptors with the protobuf runtime.

The field names, numbers and types, and the service and method names, are those of KubeEdge's
`staging/src/github.com/kubeedge/api/apis/dmi/v1beta1/api.proto` (package `v1beta1`); the plugin's tests compare
them with code that grpcio-tools generates from that file. Built at import into a private descriptor pool, so no
generated code has to match the installed protobuf, and another copy of the same file (a mapper's, in the same
process) does not clash with this one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

from fieldgate_dmi.config import INT64

PACKAGE = "v1beta1"
FILE = "api.proto"
MANAGER_SERVICE = f"{PACKAGE}.DeviceManagerService"
MAPPER_SERVICE = f"{PACKAGE}.DeviceMapperService"

# Each message's fields in the order api.proto declares them: (name, type, number). A type is a scalar, another
# message of the file, `repeated <type>` or `map<string, <type>>`.
_MESSAGES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "MapperRegisterRequest": (("withData", "bool", 1), ("mapper", "MapperInfo", 2)),
    "MapperRegisterResponse": (("modelList", "repeated DeviceModel", 1), ("deviceList", "repeated Device", 2)),
    "DeviceModel": (("name", "string", 1), ("spec", "DeviceModelSpec", 2), ("namespace", "string", 3)),
    "DeviceModelSpec": (("properties", "repeated ModelProperty", 1), ("commands", "repeated DeviceCommand", 2)),
    "ModelProperty": (("name", "string", 1), ("description", "string", 2), ("type", "string", 3),
                      ("accessMode", "string", 4), ("minimum", "string", 5), ("maximum", "string", 6),
                      ("unit", "string", 7)),
    "DeviceCommand": (("name", "string", 1), ("url", "string", 2), ("method", "string", 3),
                      ("status_code", "repeated string", 4), ("parameters", "repeated string", 5),
                      ("response", "bytes", 6)),
    "Device": (("name", "string", 1), ("spec", "DeviceSpec", 2), ("status", "DeviceStatus", 3),
               ("namespace", "string", 4)),
    "DeviceSpec": (("deviceModelReference", "string", 1), ("protocol", "ProtocolConfig", 2),
                   ("properties", "repeated DeviceProperty", 3), ("methods", "repeated DeviceMethod", 4)),
    "DeviceMethod": (("name", "string", 1), ("description", "string", 2), ("propertyNames", "repeated string", 3)),
    "DeviceProperty": (("name", "string", 1), ("desired", "TwinProperty", 2), ("visitors", "VisitorConfig", 3),
                       ("reportCycle", "int64", 4), ("collectCycle", "int64", 5), ("reportToCloud", "bool", 6),
                       ("pushMethod", "PushMethod", 7)),
    "ProtocolConfig": (("protocolName", "string", 1), ("configData", "CustomizedValue", 2)),
    "VisitorConfig": (("protocolName", "string", 1), ("configData", "CustomizedValue", 2)),
    "CustomizedValue": (("data", "map<string, google.protobuf.Any>", 1),),
    "PushMethod": (("http", "PushMethodHTTP", 1), ("mqtt", "PushMethodMQTT", 2), ("otel", "PushMethodOTEL", 4),
                   ("dbMethod", "DBMethod", 3), ("anomalyDetection", "AnomalyDetection", 5)),
    "PushMethodHTTP": (("hostname", "string", 1), ("port", "int64", 2), ("requestpath", "string", 3),
                       ("timeout", "int64", 4)),
    "PushMethodMQTT": (("address", "string", 1), ("topic", "string", 2), ("qos", "int32", 3),
                       ("retained", "bool", 4)),
    "PushMethodOTEL": (("endpointURL", "string", 1),),
    "DBMethod": (("influxdb2", "DBMethodInfluxdb2", 1), ("redis", "DBMethodRedis", 2),
                 ("tdengine", "DBMethodTDEngine", 3), ("mysql", "DBMethodMySQL", 4)),
    "DBMethodInfluxdb2": (("influxdb2ClientConfig", "Influxdb2ClientConfig", 1),
                          ("influxdb2DataConfig", "Influxdb2DataConfig", 2)),
    "Influxdb2DataConfig": (("measurement", "string", 1), ("tag", "map<string, string>", 2),
                            ("fieldKey", "string", 3)),
    "Influxdb2ClientConfig": (("url", "string", 1), ("org", "string", 2), ("bucket", "string", 3)),
    "DBMethodRedis": (("redisClientConfig", "RedisClientConfig", 1),),
    "RedisClientConfig": (("addr", "string", 1), ("db", "int32", 2), ("poolsize", "int32", 3),
                          ("minIdleConns", "int32", 4)),
    "DBMethodTDEngine": (("tdEngineClientConfig", "TDEngineClientConfig", 1),),
    "TDEngineClientConfig": (("addr", "string", 1), ("dbname", "string", 2)),
    "DBMethodMySQL": (("mysqlClientConfig", "MySQLClientConfig", 1),),
    "MySQLClientConfig": (("addr", "string", 1), ("database", "string", 2), ("userName", "string", 3)),
    "DBMethodOTEL": (("otelExporterConfig", "OTELExporterConfig", 1),),
    "OTELExporterConfig": (("endpointURL", "string", 1),),
    "AnomalyDetection": (("data", "map<string, google.protobuf.Any>", 1),),
    "MapperInfo": (("name", "string", 1), ("version", "string", 2), ("api_version", "string", 3),
                   ("protocol", "string", 4), ("address", "bytes", 5), ("state", "string", 6)),
    "ReportDeviceStatusRequest": (("deviceName", "string", 1), ("reportedDevice", "DeviceStatus", 2),
                                  ("deviceNamespace", "string", 3)),
    "ReportDeviceStatesRequest": (("deviceName", "string", 1), ("deviceNamespace", "string", 2),
                                  ("state", "string", 3)),
    "DeviceStatus": (("twins", "repeated Twin", 1), ("reportToCloud", "bool", 2), ("reportCycle", "int64", 3)),
    "Twin": (("propertyName", "string", 1), ("observedDesired", "TwinProperty", 2), ("reported", "TwinProperty", 3)),
    "TwinProperty": (("value", "string", 1), ("metadata", "map<string, string>", 2)),
    "ReportDeviceStatusResponse": (),
    "ReportDeviceStatesResponse": (),
    "RegisterDeviceRequest": (("device", "Device", 1),),
    "RegisterDeviceResponse": (("deviceName", "string", 1), ("deviceNamespace", "string", 2)),
    "CreateDeviceModelRequest": (("model", "DeviceModel", 1),),
    "CreateDeviceModelResponse": (("deviceModelName", "string", 1), ("deviceModelNamespace", "string", 2)),
    "RemoveDeviceRequest": (("deviceName", "string", 1), ("deviceNamespace", "string", 2)),
    "RemoveDeviceResponse": (),
    "RemoveDeviceModelRequest": (("modelName", "string", 1), ("modelNamespace", "string", 2)),
    "RemoveDeviceModelResponse": (),
    "UpdateDeviceRequest": (("device", "Device", 1),),
    "UpdateDeviceResponse": (),
    "UpdateDeviceModelRequest": (("model", "DeviceModel", 1),),
    "UpdateDeviceModelResponse": (),
    "GetDeviceRequest": (("deviceName", "string", 1), ("deviceNamespace", "string", 2)),
    "GetDeviceResponse": (("device", "Device", 1),),
}

# Each service's methods in the order api.proto declares them: (method, request, response).
SERVICES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "DeviceManagerService": (
        ("MapperRegister", "MapperRegisterRequest", "MapperRegisterResponse"),
        ("ReportDeviceStatus", "ReportDeviceStatusRequest", "ReportDeviceStatusResponse"),
        ("ReportDeviceStates", "ReportDeviceStatesRequest", "ReportDeviceStatesResponse"),
    ),
    "DeviceMapperService": (
        ("RegisterDevice", "RegisterDeviceRequest", "RegisterDeviceResponse"),
        ("RemoveDevice", "RemoveDeviceRequest", "RemoveDeviceResponse"),
        ("UpdateDevice", "UpdateDeviceRequest", "UpdateDeviceResponse"),
        ("CreateDeviceModel", "CreateDeviceModelRequest", "CreateDeviceModelResponse"),
        ("RemoveDeviceModel", "RemoveDeviceModelRequest", "RemoveDeviceModelResponse"),
        ("UpdateDeviceModel", "UpdateDeviceModelRequest", "UpdateDeviceModelResponse"),
        ("GetDevice", "GetDeviceRequest", "GetDeviceResponse"),
    ),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "int32": _F.TYPE_INT32,
            "int64": _F.TYPE_INT64}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_name: str) -> None:
    if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{type_name}" if "." in type_name else f".{PACKAGE}.{type_name}"


def _message(name: str, fields: tuple[tuple[str, str, int], ...]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, type_text, number in fields:
        field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
        if type_text.startswith("map<"):
            key_type, value_type = (part.strip() for part in type_text[4:-1].split(","))
            entry_name = field_name[0].upper() + field_name[1:] + "Entry"
            entry = message.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            key = entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL)
            _set_type(key, key_type)
            value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
            _set_type(value, value_type)
            field.label = _F.LABEL_REPEATED
            field.type = _F.TYPE_MESSAGE
            field.type_name = f".{PACKAGE}.{name}.{entry_name}"
        elif type_text.startswith("repeated "):
            field.label = _F.LABEL_REPEATED
            _set_type(field, type_text.removeprefix("repeated "))
        else:
            _set_type(field, type_text)
    return message


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The DMI v1beta1 file as a descriptor, as protoc describes KubeEdge's api.proto."""
    proto = descriptor_pb2.FileDescriptorProto(name=FILE, package=PACKAGE, syntax="proto3",
                                               dependency=["google/protobuf/any.proto"])
    proto.options.go_package = f"./;{PACKAGE}"
    for name, fields in _MESSAGES.items():
        proto.message_type.append(_message(name, fields))
    for service_name, methods in SERVICES.items():
        service = proto.service.add(name=service_name)
        for method_name, request, response in methods:
            method = service.method.add(name=method_name, input_type=f".{PACKAGE}.{request}",
                                        output_type=f".{PACKAGE}.{response}")
            method.options.SetInParent()  # protoc keeps the `{}` of `rpc …(…) returns (…) {}` as empty options
    return proto


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    pool.Add(file_descriptor())
    return pool


POOL = _pool()


def message_class(name: str) -> Any:
    """The message class of a DMI message by its name in api.proto."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


# The messages are classes made at run time: typed Any, as generated code without stubs would be.
MapperRegisterRequest: Any = message_class("MapperRegisterRequest")
MapperRegisterResponse: Any = message_class("MapperRegisterResponse")
MapperInfo: Any = message_class("MapperInfo")
DeviceModel: Any = message_class("DeviceModel")
ModelProperty: Any = message_class("ModelProperty")
Device: Any = message_class("Device")
DeviceProperty: Any = message_class("DeviceProperty")
TwinProperty: Any = message_class("TwinProperty")
ReportDeviceStatusRequest: Any = message_class("ReportDeviceStatusRequest")
ReportDeviceStatusResponse: Any = message_class("ReportDeviceStatusResponse")
ReportDeviceStatesRequest: Any = message_class("ReportDeviceStatesRequest")
ReportDeviceStatesResponse: Any = message_class("ReportDeviceStatesResponse")
REQUESTS: dict[str, Any] = {method: message_class(request) for methods in SERVICES.values()
                            for method, request, _ in methods}
RESPONSES: dict[str, Any] = {method: message_class(response) for methods in SERVICES.values()
                             for method, _, response in methods}


def method_path(service: str, method: str) -> str:
    """The gRPC path of a method, e.g. `/v1beta1.DeviceMapperService/RegisterDevice`."""
    return f"/{PACKAGE}.{service}/{method}"


# --- customized values: google.protobuf.Any wrapping one scalar, as edgecore sends them --------------------------

_WRAPPERS: dict[str, type[Any]] = {
    "google.protobuf.StringValue": wrappers_pb2.StringValue,
    "google.protobuf.BoolValue": wrappers_pb2.BoolValue,
    "google.protobuf.Int32Value": wrappers_pb2.Int32Value,
    "google.protobuf.Int64Value": wrappers_pb2.Int64Value,
    "google.protobuf.FloatValue": wrappers_pb2.FloatValue,
    "google.protobuf.DoubleValue": wrappers_pb2.DoubleValue,
}
INT32 = 2**31


def pack_value(target: Any, value: str | int | float | bool) -> None:
    """Fill a google.protobuf.Any with one scalar the way edgecore does (dtcommon.dataToAny): strings as
    StringValue, booleans as BoolValue, integers as Int32Value (Int64Value beyond), other numbers as FloatValue (the
    one floating type mappers decode)."""
    wrapped: Any
    if isinstance(value, bool):
        wrapped = wrappers_pb2.BoolValue(value=value)
    elif isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise ValueError(f"{value} does not fit a 64-bit integer")
        wrapped = (wrappers_pb2.Int32Value(value=value) if -INT32 <= value < INT32
                   else wrappers_pb2.Int64Value(value=value))
    elif isinstance(value, float):
        wrapped = wrappers_pb2.FloatValue(value=value)
    else:
        wrapped = wrappers_pb2.StringValue(value=value)
    target.type_url = f"type.googleapis.com/{wrapped.DESCRIPTOR.full_name}"
    target.value = wrapped.SerializeToString()


def unpack_value(packed: Any) -> str | int | float | bool:
    """The scalar in a google.protobuf.Any that pack_value filled; ValueError for any other content."""
    name = str(packed.type_url).rsplit("/", 1)[-1]
    wrapper = _WRAPPERS.get(name)
    if wrapper is None:
        raise ValueError(f"not a scalar wrapper: {name!r}")
    result: str | int | float | bool = wrapper.FromString(packed.value).value
    return result
