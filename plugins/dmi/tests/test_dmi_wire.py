"""The plugin's DMI descriptors are KubeEdge's: compared with what grpcio-tools makes of the shared api.proto."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dmi_mapper import decode_any
from fieldgate_dmi import wire
from google.protobuf import descriptor_pb2


def reference(kubeedge: SimpleNamespace) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    kubeedge.pb.DESCRIPTOR.CopyToProto(proto)
    return proto


def test_every_message_field_number_and_type_is_kubeedges(kubeedge: SimpleNamespace) -> None:
    ours, theirs = wire.file_descriptor(), reference(kubeedge)
    assert [m.name for m in ours.message_type] == [m.name for m in theirs.message_type]
    for mine, kubeedges in zip(ours.message_type, theirs.message_type, strict=True):
        assert mine == kubeedges, f"message {mine.name} differs from api.proto"
    assert (ours.package, list(ours.dependency), ours.syntax) == (theirs.package, list(theirs.dependency), "proto3")


def test_the_services_and_methods_are_kubeedges(kubeedge: SimpleNamespace) -> None:
    ours, theirs = wire.file_descriptor(), reference(kubeedge)
    assert list(ours.service) == list(theirs.service)
    assert ours == theirs  # nothing else differs either (options included)
    assert wire.method_path("DeviceMapperService", "RegisterDevice") == "/v1beta1.DeviceMapperService/RegisterDevice"


def test_messages_cross_between_both_sides(kubeedge: SimpleNamespace) -> None:
    device = wire.Device(name="boiler-1", namespace="plant")
    device.spec.protocol.protocolName = "modbus"
    wire.pack_value(device.spec.protocol.configData.data["ip"], "10.0.0.5")
    wire.pack_value(device.spec.protocol.configData.data["port"], 5502)
    wire.pack_value(device.spec.protocol.configData.data["big"], 2**40)
    wire.pack_value(device.spec.protocol.configData.data["scale"], 0.5)
    wire.pack_value(device.spec.protocol.configData.data["swap"], True)
    prop = device.spec.properties.add(name="temperature", collectCycle=1000, reportToCloud=True)
    prop.desired.value = "21.5"
    prop.desired.metadata["type"] = "float"
    theirs = kubeedge.pb.Device.FromString(device.SerializeToString())
    assert theirs.name == "boiler-1" and theirs.namespace == "plant"
    assert {key: decode_any(value) for key, value in theirs.spec.protocol.configData.data.items()} == {
        "ip": "10.0.0.5", "port": 5502, "big": 2**40, "scale": 0.5, "swap": True}
    assert theirs.spec.properties[0].desired.value == "21.5"
    assert dict(theirs.spec.properties[0].desired.metadata) == {"type": "float"}

    report = kubeedge.pb.ReportDeviceStatusRequest(deviceName="boiler-1", reportedDevice=kubeedge.pb.DeviceStatus(
        twins=[kubeedge.pb.Twin(propertyName="temperature", reported=kubeedge.pb.TwinProperty(value="23.5"))]))
    ours = wire.ReportDeviceStatusRequest.FromString(report.SerializeToString())
    assert ours.reportedDevice.twins[0].reported.value == "23.5"


def test_only_scalars_travel_as_customized_values() -> None:
    packed = wire.DeviceProperty().visitors.configData.data["x"]
    with pytest.raises(ValueError, match="64-bit"):
        wire.pack_value(packed, 2**64)
    packed.type_url = "type.googleapis.com/google.protobuf.Struct"
    with pytest.raises(ValueError, match="not a scalar"):
        wire.unpack_value(packed)
