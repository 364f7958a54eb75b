"""What the session makes of what a server sends and of what the twin writes: scalars as twin values, anything
else a reason; desired values as the node's type, checked and rounded; failures as the gateway's errors."""

from __future__ import annotations

import datetime
import uuid

import pytest
from asyncua import ua
from fieldgate_opcua.session import plain, status_name, to_variant, translate

from gateway.errors import DeviceTimeout, ProtocolError


def test_scalars_become_twin_values() -> None:
    assert plain(1.5) == 1.5 and plain(7) == 7 and plain(True) is True and plain("x") == "x" and plain(b"\0") == b"\0"
    assert plain(ua.NodeClass.Variable) == 2 and type(plain(ua.NodeClass.Variable)) is int  # an enumeration
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert plain(when) == "2026-01-02T03:04:05+00:00"
    assert plain(uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")) == "72962B91-FA75-4AE6-8D28-B404DC7DAF63"
    assert plain(ua.LocalizedText("Kessel", "de")) == "Kessel"
    assert plain(ua.QualifiedName("Temp", 2)) == "2:Temp"
    assert plain(ua.NodeId("Line1.Temp", 2)) == "ns=2;s=Line1.Temp"


@pytest.mark.parametrize(("value", "reason"), [
    (None, "no value (null)"),
    ([1.0, 2.0, 3.0], "an array of 3 values (only scalars are read)"),
    (ua.Argument(), "a Argument value (only scalars are read)"),
])
def test_what_is_no_twin_value_says_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        plain(value)


def test_desired_values_take_the_node_type() -> None:
    assert to_variant(1500, ua.VariantType.UInt16) == ua.Variant(1500, ua.VariantType.UInt16)
    assert to_variant(-4.5, ua.VariantType.Int32).Value == -5  # half away from zero, never truncated
    assert to_variant(2.5, ua.VariantType.Byte).Value == 3
    assert to_variant(True, ua.VariantType.Int16).Value == 1
    assert to_variant(1, ua.VariantType.Boolean) == ua.Variant(True, ua.VariantType.Boolean)
    assert to_variant(3, ua.VariantType.Double) == ua.Variant(3.0, ua.VariantType.Double)
    assert to_variant(21.5, ua.VariantType.String) == ua.Variant("21.5", ua.VariantType.String)
    assert to_variant("Kessel", ua.VariantType.LocalizedText).Value == ua.LocalizedText("Kessel")


@pytest.mark.parametrize(("value", "variant_type", "reason"), [
    (70000, ua.VariantType.UInt16, "70000 is outside 0..65535"),
    (-1, ua.VariantType.UInt64, "-1 is outside 0..18446744073709551615"),
    (2 ** 63, ua.VariantType.Int64, "is outside -9223372036854775808..9223372036854775807"),
    (float("nan"), ua.VariantType.Int32, "not a number"),
    ("12", ua.VariantType.Int32, "not a number"),
    (2, ua.VariantType.Boolean, "a Boolean takes true/false or 0/1"),
    (1e39, ua.VariantType.Float, "above the largest Float"),
    ("x", ua.VariantType.Double, "not a number"),
    ("x", ua.VariantType.ByteString, "a ByteString takes bytes"),
    (1, ua.VariantType.ExtensionObject, "writing a ExtensionObject is not supported"),
])
def test_desired_values_the_node_cannot_hold_are_refused(value: object, variant_type: ua.VariantType,
                                                         reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        to_variant(value, variant_type)


def test_status_names_and_failures() -> None:
    assert status_name(ua.StatusCodes.BadSensorFailure) == "BadSensorFailure"
    assert status_name(0x80ABCDEF).startswith(("Bad", "0x"))  # a code no table knows still gets a name
    refused = translate(ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied), "cannot connect")
    assert type(refused) is ProtocolError
    assert str(refused) == "cannot connect: the server refused the login (BadUserAccessDenied)"
    assert isinstance(translate(ua.UaStatusCodeError(ua.StatusCodes.BadSessionIdInvalid), "read failed"),
                      DeviceTimeout)
    assert isinstance(translate(ConnectionRefusedError(111, "refused"), "cannot connect"), DeviceTimeout)
    assert str(translate(TimeoutError(), "read failed")) == "read failed: no answer in time"
