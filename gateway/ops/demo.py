"""The demo configuration: a few simulated devices whose values visibly change."""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = """\
kind: Gateway
name: demo
http: {{listen: "{listen}"}}
eventbus: {{url: none}}
---
kind: DeviceModel
name: thermostat
description: A boiler thermostat with a writable setpoint
properties:
  - {{name: temperature, type: float, access: ReadOnly, unit: degC, minimum: -40, maximum: 125}}
  - {{name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 5, maximum: 90}}
  - {{name: burner_on, type: boolean, access: ReadWrite}}
---
kind: DeviceModel
name: energy-meter
properties:
  - {{name: energy, type: int, unit: Wh}}
  - {{name: power, type: float, unit: W, minimum: 0}}
"""

BOILER = """\
---
kind: Device
name: boiler-{n}
model: thermostat
labels: {{line: "{line}", site: demo}}
protocol: {{name: virtual, config: {{}}}}
properties:
  - name: temperature
    collect_interval: 1s
    visitor: {{generator: sine, amplitude: 8, period: {period}s, offset: {offset}}}
  - name: setpoint
    desired: {setpoint}
    visitor: {{generator: memory, initial: 20.0}}
  - name: burner_on
    visitor: {{generator: memory, initial: false}}
"""

METER = """\
---
kind: Device
name: meter-{n}
model: energy-meter
labels: {{line: "{line}", site: demo}}
protocol: {{name: virtual, config: {{seed: {n}}}}}
properties:
  - {{name: energy, collect_interval: 1s, visitor: {{generator: counter, start: 100000, step: 7}}}}
  - {{name: power, collect_interval: 500ms, visitor: {{generator: random, minimum: 400, maximum: 2400}}}}
"""


def write_demo_config(directory: Path, *, listen: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    parts = [DEMO_CONFIG.format(listen=listen)]
    for n in range(1, 4):
        parts.append(BOILER.format(n=n, line=(n + 1) // 2, period=30 + 15 * n, offset=55 + 3 * n,
                                   setpoint=60 + n))
        parts.append(METER.format(n=n, line=(n + 1) // 2))
    (directory / "demo.yaml").write_text("".join(parts), encoding="utf-8")
    return directory
