"""Plant documents more than one test module runs a gateway on (str.format templates)."""

# a device that never answers (a closed port) next to a healthy one: both log, under their own names
LOGS_PLANT = """\
kind: Gateway
name: {name}
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
---
kind: DeviceModel
name: thermo
properties:
  - {{name: temperature, type: float, access: ReadOnly}}
---
kind: Device
name: meter-down
model: thermo
timeout: 300ms
protocol:
  name: modbus-tcp
  config: {{host: 127.0.0.1, port: {closed}, unit: 1}}
properties:
  - name: temperature
    collect_interval: 200ms
    visitor: {{register: InputRegister, offset: 0, type: float32}}
---
kind: Device
name: boiler-1
model: thermo
protocol: {{name: virtual}}
properties:
  - name: temperature
    collect_interval: 200ms
    visitor: {{generator: sine, amplitude: {amplitude}, period: 20s, offset: 60}}
"""
