from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, ResourceError
from gateway.plugins import get_plugin_manager
from gateway.protocols.base import Protocol, ReadResult
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import check_documents, load_path, parse_yaml
from gateway.resources.schema import Base, Device

PROTOCOLS = protocol_registry(get_plugin_manager(load_entry_points=False))

VALID = """\
kind: Gateway
name: plant-gw
http: {listen: "127.0.0.1:8080"}
---
kind: DeviceModel
name: thermo
properties:
  - {name: temperature, type: float, access: ReadOnly, unit: degC, minimum: -40, maximum: 125}
  - {name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 5, maximum: 90}
  - {name: count, type: int}
---
kind: Device
name: boiler-1
model: thermo
labels: {line: "1"}
protocol: {name: virtual, config: {}}
properties:
  - name: temperature
    collect_interval: 250ms
    report_interval: 5s
    visitor: {generator: sine, amplitude: 10, period: 60s, offset: 20}
  - name: setpoint
    desired: 21.5
    visitor: {generator: memory, initial: 20.0}
  - name: count
    collect_interval: 2
    visitor: {generator: counter, start: 0, step: 1}
"""


def load_text(write_config: Callable[[str, str], Path], text: str, name: str = "plant.yaml") -> Any:
    return load_path(write_config(text, name), PROTOCOLS)


def problems(write_config: Callable[[str, str], Path], text: str) -> list[str]:
    with pytest.raises(ResourceError) as info:
        load_text(write_config, text)
    return info.value.problems


def test_valid_config_binds_devices_with_parsed_durations(write_config: Callable[[str, str], Path]) -> None:
    config = load_text(write_config, VALID)
    assert config.gateway.name == "plant-gw"
    device = config.devices["default/boiler-1"]
    assert device.properties["temperature"].collect_interval == 0.25
    assert device.properties["temperature"].report_interval == 5.0
    assert device.properties["count"].collect_interval == 2.0
    # report_interval defaults to collect_interval
    assert device.properties["setpoint"].report_interval == device.properties["setpoint"].collect_interval == 1.0
    assert device.properties["setpoint"].writable


def test_directory_of_files_is_one_config(tmp_path: Path) -> None:
    docs = VALID.split("---\n")
    (tmp_path / "a-gateway.yaml").write_text(docs[0])
    (tmp_path / "b-models.yml").write_text(docs[1])
    (tmp_path / "c-devices.yaml").write_text(docs[2])
    (tmp_path / "notes.txt").write_text("not yaml: [")
    config = load_path(tmp_path, PROTOCOLS)
    assert list(config.devices) == ["default/boiler-1"]


@pytest.mark.parametrize(("value", "seconds"), [("250ms", 0.25), ("1s", 1.0), ("5m", 300.0), (2, 2.0),
                                                ("1.5s", 1.5), ("2h", 7200.0)])
def test_durations(write_config: Callable[[str, str], Path], value: Any, seconds: float) -> None:
    text = VALID.replace("collect_interval: 2\n", f"collect_interval: {value!r}\n".replace("'", '"'))
    config = load_text(write_config, text)
    assert config.devices["default/boiler-1"].properties["count"].collect_interval == seconds


def test_error_names_file_document_and_field_path(write_config: Callable[[str, str], Path]) -> None:
    lines = problems(write_config, VALID.replace("collect_interval: 2\n", "collect_interval: soon\n"))
    assert len(lines) == 1
    assert lines[0].endswith(
        "plant.yaml: document 3 (Device boiler-1): $.properties[2].collect_interval: "
        "Expected a duration like '250ms', '1s', '5m' or a number of seconds, got 'soon'"
    )


class _OffsetVisitor(Base, kw_only=True):
    offset: Annotated[int, msgspec.Meta(ge=0)]


class OffsetProtocol(Protocol):
    names: ClassVar[tuple[str, ...]] = ("offsets",)
    config_type: ClassVar[type[msgspec.Struct]] = Base
    visitor_type: ClassVar[type[msgspec.Struct]] = _OffsetVisitor

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return frozenset({"int", "float"})

    async def open(self) -> None: ...
    async def read(self, plan: Any) -> ReadResult:
        return ReadResult()
    async def write(self, prop: Any, value: Any) -> None: ...
    async def close(self) -> None: ...


class ReadOnlyOffsets(OffsetProtocol):
    """Offsets that cannot be written: a ReadWrite property is refused by the protocol's own check."""

    names: ClassVar[tuple[str, ...]] = ("read-only-offsets",)

    @classmethod
    def check_visitor(cls, visitor: Any, model: Any) -> None:
        if model.access == "ReadWrite":
            raise ConfigError(f"{model.name!r} is ReadWrite, and offset {visitor.offset} cannot be written")


def test_a_protocol_checks_a_visitor_against_its_model_entry(write_config: Callable[[str, str], Path]) -> None:
    text = """\
    kind: DeviceModel
    name: m
    properties: [{name: a, type: int}, {name: b, type: int, access: ReadWrite}]
    ---
    kind: Device
    name: d
    model: m
    protocol: {name: read-only-offsets}
    properties:
      - {name: a, visitor: {offset: 1}}
      - {name: b, visitor: {offset: 2}}
    """
    with pytest.raises(ResourceError) as info:
        load_path(write_config(text, "plant.yaml"), {**PROTOCOLS, "read-only-offsets": ReadOnlyOffsets})
    assert [line.split("plant.yaml: ", 1)[1] for line in info.value.problems] == [
        "document 2 (Device d): $.properties[1].visitor: 'b' is ReadWrite, and offset 2 cannot be written"]


def test_design_example_error_line(write_config: Callable[[str, str], Path]) -> None:
    text = """\
    kind: DeviceModel
    name: thermo
    properties: [{name: temperature, type: float}]
    ---
    kind: Gateway
    name: gw
    ---
    kind: Device
    name: boiler-1
    model: thermo
    protocol: {name: offsets}
    properties:
      - {name: temperature, visitor: {offset: -1}}
    """
    path = write_config(text, "plant.yaml")
    with pytest.raises(ResourceError) as info:
        load_path(path, {**PROTOCOLS, "offsets": OffsetProtocol})
    assert info.value.problems == [
        f"{path}: document 3 (Device boiler-1): $.properties[0].visitor.offset: Expected int >= 0, got -1"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: boiler-1", "name: Boiler_1", "document 3 (Device Boiler_1): $.name: Expected str matching regex"),
        ("name: boiler-1", "name: boiler--1", "$.name: Expected str matching regex"),
        ("model: thermo", "model: thermo-2", "$.model: no DeviceModel default/thermo-2"),
        ("  - name: count\n", "  - name: counts\n", "$.properties[2].name: property 'counts' is not in model"),
        ("{generator: counter, start: 0, step: 1}", "{generator: sine}",
         "$.properties[2].visitor: the visitor gives double/float, which does not fit the model type int"),
        ("desired: 21.5", "desired: 95", "$.properties[1].desired: setpoint: 95.0 is above the maximum 90"),
        ("desired: 21.5", "desired: warm", "$.properties[1].desired: setpoint: expected a number, got 'warm'"),
        ("desired: 21.5", "desired: .nan", "$.properties[1].desired: expected a finite number, got nan"),
        ("desired: 21.5", "desired: '-inf'", "$.properties[1].desired: setpoint: expected a finite number, got "
         "'-inf'"),
        ("offset: 20}", "offset: .inf}", "$.properties[0].visitor.offset: expected a finite number, got inf"),
        ("{name: count, type: int}", "{name: count, type: int, max_length: 10}",
         "$.properties[2].max_length: max_length applies to strings and bytes, not int"),
        ("    collect_interval: 2\n", "    collect_interval: 2\n    desired: 3\n",
         "$.properties[2].desired: 'count' is ReadOnly: only ReadWrite properties take a desired value"),
        ("labels: {line: \"1\"}", "labels: {line: \"1\"}\ncolour: red",
         "document 3 (Device boiler-1): $: Object contains unknown field colour"),
        ("protocol: {name: virtual, config: {}}", "protocol: {name: bacnet}",
         "$.protocol.name: unknown protocol 'bacnet'"),
        ("protocol: {name: virtual, config: {}}", "protocol: {name: virtual, config: {seed: many}}",
         "$.protocol.config.seed: Expected int | null, got 'many'"),
        ("report_interval: 5s", "report_interval: 100ms",
         "$.properties[0].report_interval: must not be shorter than collect_interval"),
        ("{generator: sine, amplitude: 10, period: 60s, offset: 20}", "{generator: wave}",
         "$.properties[0].visitor.generator: Invalid value 'wave'"),
        ("kind: Device\n", "kind: Devise\n", "document 3 (Devise boiler-1): $.kind: Invalid value 'Devise'"),
    ],
)
def test_each_check_reports_one_precise_line(write_config: Callable[[str, str], Path], old: str, new: str,
                                             expected: str) -> None:
    assert old in VALID
    lines = problems(write_config, VALID.replace(old, new, 1))
    assert len(lines) == 1, lines
    assert "plant.yaml: document" in lines[0]
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("minimum: 5,", "minimum: .nan,", "$.properties[1].minimum: expected a finite number, got nan"),
    ("maximum: 125}", "maximum: -.inf}", "$.properties[0].maximum: expected a finite number, got -inf"),
])
def test_a_model_bound_that_is_no_number_is_refused(write_config: Callable[[str, str], Path], old: str, new: str,
                                                    expected: str) -> None:
    """Before, `minimum: .nan` passed and turned the bounds off: every comparison with NaN is false."""
    lines = problems(write_config, VALID.replace(old, new, 1))
    assert f"document 2 (DeviceModel thermo): {expected} (NaN and infinities are no value)" in lines[0]


def test_duplicate_and_multiple_problems_are_all_reported(write_config: Callable[[str, str], Path]) -> None:
    text = VALID + "---\n" + VALID.split("---\n")[2].replace("model: thermo", "model: nope")
    text = text.replace("desired: 21.5", "desired: 200", 1)
    lines = problems(write_config, text)
    assert any("document 4 (Device boiler-1): $.name: duplicate Device default/boiler-1" in line for line in lines)
    assert any("$.properties[1].desired" in line for line in lines)


def test_yaml_syntax_error_names_line(write_config: Callable[[str, str], Path]) -> None:
    lines = problems(write_config, "kind: Device\nname: [unclosed\n")
    assert len(lines) == 1
    assert "plant.yaml: line " in lines[0] and "invalid YAML" in lines[0]


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_path(tmp_path / "nope.yaml", PROTOCOLS)


def test_non_mapping_document(write_config: Callable[[str, str], Path]) -> None:
    lines = problems(write_config, "- just\n- a list\n")
    assert lines == [f"{write_config('- just', 'x.yaml').parent}/plant.yaml: document 1: $: "
                     "Expected a mapping (a resource document), got list"]


# --- property-based: broken documents only ever raise the loader's own error --------------------------------

VALID_DOCS = list(yaml.safe_load_all(VALID))
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def broken_documents(draw: st.DrawFn) -> list[Any]:
    import copy

    docs = copy.deepcopy(VALID_DOCS)
    for _ in range(draw(st.integers(1, 4))):
        doc_index = draw(st.integers(0, len(docs) - 1))
        paths = _paths(docs[doc_index])
        path = draw(st.sampled_from(paths))
        if not path:
            docs[doc_index] = draw(json_values)
            continue
        parent = docs[doc_index]
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return docs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_documents())
def test_random_broken_documents_raise_only_resource_errors(docs: list[Any]) -> None:
    from gateway.resources.loader import Source

    raw = [(Source("fuzz.yaml", i), doc) for i, doc in enumerate(docs, start=1) if doc is not None]
    try:
        check_documents(raw, PROTOCOLS)
    except ResourceError as exc:
        assert exc.problems and all(line.startswith("fuzz.yaml") for line in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_text_raises_only_resource_errors(text: str) -> None:
    try:
        raw = parse_yaml(text, "fuzz.yaml")
        check_documents(raw, PROTOCOLS)
    except ResourceError as exc:
        assert all(line.startswith("fuzz.yaml") for line in exc.problems)


def test_device_struct_round_trips() -> None:
    device = msgspec.convert(VALID_DOCS[2], Device, dec_hook=__import__("gateway.resources.schema",
                                                                        fromlist=["dec_hook"]).dec_hook)
    assert device.properties[0].collect_interval == 0.25


@pytest.mark.parametrize("text", [
    "kind: Device\nname: d\ndescription: " + "[" * 70 + "]" * 70,  # parses, but nothing may walk it later
    "kind: Device\nname: d\nlabels:\n" + "".join("  " * (level + 1) + f"k{level}:\n" for level in range(80))
    + "  " * 81 + "x: 1\n",
    "[" * 3000,
])
def test_a_document_nested_too_deep_names_the_file_and_document(text: str) -> None:
    with pytest.raises(ResourceError) as raised:
        parse_yaml(text, "deep.yaml")
    (problem,) = raised.value.problems
    assert problem.startswith("deep.yaml: ") and "nest" in problem
