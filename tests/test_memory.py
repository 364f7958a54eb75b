"""What a gateway keeps in memory for its configuration and its web app (issue 21, point 5; the running figures are
in tests/benchmarks/test_memory.py). Measured with tracemalloc and sys.modules, which count the same on any box."""

from __future__ import annotations

import datetime
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

from gateway.resources.loader import PackedDocument, document_value, load_path, parse_yaml
from gateway.runtime import Gateway

DEVICES = 100
PROPERTIES = 100


def plant_yaml() -> str:
    model = "".join(f"  - {{name: p{i}, type: float}}\n" for i in range(PROPERTIES))
    properties = "".join(f"  - {{name: p{i}, collect_interval: 1s, visitor: {{register: HoldingRegister, offset: "
                         f"{2 * i}, type: float32}}}}\n" for i in range(PROPERTIES))
    devices = "".join(f"---\nkind: Device\nname: dev-{d}\nmodel: m\nprotocol: {{name: modbus-tcp, config: {{host: "
                      f"127.0.0.1, port: {5020 + d % 10}, unit: {d // 10 + 1}}}}}\nproperties:\n{properties}"
                      for d in range(DEVICES))
    return f"kind: Gateway\nname: memory\neventbus: {{url: none}}\n---\nkind: DeviceModel\nname: m\nproperties:\n" \
           f"{model}{devices}"


def test_a_configuration_of_10000_properties_keeps_under_9_mb(tmp_path: Path) -> None:
    """100 devices of 100 Modbus properties: the running configuration (documents as written, decoded documents,
    bound properties) kept 15.4 MB; the documents as written are packed (MessagePack), the YAML loader shares short
    strings across documents and one Duration stands for each interval text: 6.8 MB."""
    config = tmp_path / "plant.yaml"
    config.write_text(plant_yaml())
    Gateway.from_path(config, data_dir=tmp_path / "warm")  # imports and caches done once, before counting
    gc.collect()
    tracemalloc.start()
    try:
        gateway = Gateway.from_path(config, data_dir=tmp_path / "data")
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(gateway.config.devices) == DEVICES
    print(f"\nthe configuration of {DEVICES * PROPERTIES} properties keeps {kept / 2**20:.1f} MB")
    assert kept < 9 * 2**20


def test_the_documents_as_written_are_kept_packed_and_read_back_the_same(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(plant_yaml())
    loaded = load_path(config, Gateway.from_path(config, data_dir=tmp_path / "data").protocols)
    _, written = loaded.raw[("Device", "default", "dev-7")]
    assert isinstance(written, PackedDocument)
    as_parsed = next(raw for _, raw in parse_yaml(config.read_text(), str(config)) if raw.get("name") == "dev-7")
    assert document_value(written) == as_parsed
    assert document_value(written) is not document_value(written)  # a fresh copy each time: safe to change


def test_a_document_that_would_not_read_back_the_same_is_kept_as_it_is() -> None:
    for raw in ({"kind": "Device", "big": 2**70}, {"kind": "ConfigItem", "when": datetime.date(2026, 12, 7)},
                {"kind": "Device", "keys": {1: "one"}, "blob": b"\x00\xff"}):
        kept = PackedDocument.of(raw)
        assert document_value(kept) == raw
        if isinstance(kept, PackedDocument):
            assert kept == PackedDocument.of(dict(raw))  # equal documents, equal packs
    assert not isinstance(PackedDocument.of({"big": 2**70}), PackedDocument)
    assert not isinstance(PackedDocument.of({"when": datetime.date(2026, 12, 7)}), PackedDocument)


def test_the_web_app_does_not_import_pydantic_nor_cryptography(tmp_path: Path) -> None:
    """Litestar adds pydantic's plugin wherever pydantic is installed (it is, here, for the tests' tools): 7 MB in a
    gateway whose bodies are msgspec Structs. cryptography (15 MB) is for streams from other nodes only."""
    config = tmp_path / "plant.yaml"
    config.write_text(plant_yaml())
    probe = ("import sys; from gateway.runtime import Gateway; from gateway.web.app import create_app; "
             f"gw = Gateway.from_path({str(config)!r}, data_dir={str(tmp_path / 'data')!r}); create_app(gw.api); "
             "print(','.join(m for m in ('pydantic', 'attrs', 'cryptography', 'google.protobuf') "
             "if m in sys.modules) or 'none')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
