"""`fieldgate bench` is registered as a built-in plugin and its cases stay bounded."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway.ops import bench
from gateway.plugins import get_plugin_manager


def test_registered_through_the_plugin_hook() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    names = [command.name for commands in pm.hook.register_commands() for command in commands]
    assert "bench" in names


def test_pipeline_without_its_module_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "PIPELINE_MODULE", "gateway.no_such_bench_pipeline")
    assert bench.run(argparse.Namespace(suite="pipeline", quick=True, json=True)) == 2
    assert "pipeline benchmark is unavailable" in capsys.readouterr().err


def test_codec_quick_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "measure", lambda call, ops, budget: (call(), float(ops))[1])
    assert bench.run(argparse.Namespace(suite="codec", quick=True, json=True)) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["backend"] for row in rows} >= {"python", "pymodbus"}
    assert all(row["ops_per_s"] > 0 for row in rows)


def test_decoders_agree_on_the_bench_block() -> None:
    from gateway.codec import python as python_codec

    fields = bench.codec_fields()
    block = bench.codec_block(fields)
    assert len(block) == 125
    expected = python_codec.FieldTable(fields).decode(block)
    assert bench._pymodbus_decoder(fields)(block) == pytest.approx(expected)
