"""`fieldgate sim modbus`: serve simulated Modbus devices from firmware profiles or device documents."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from fieldgate_modbus.config import RtuConfig
from fieldgate_modbus.sim import (
    ModbusSimulator,
    SimUnit,
    register_layout,
    units_from_documents,
    units_from_profiles,
)
from gateway.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="sim_kind", required=True, metavar="KIND")
    modbus = kinds.add_parser("modbus", help="simulate Modbus TCP or RTU devices")
    where = modbus.add_mutually_exclusive_group()
    where.add_argument(
        "--listen", default="127.0.0.1:5020", metavar="HOST:PORT", help="serve Modbus TCP here"
    )
    where.add_argument("--serial", metavar="DEVICE", help="serve Modbus RTU on this serial device")
    modbus.add_argument("--baudrate", type=int, default=9600)
    modbus.add_argument("--bytesize", type=int, choices=(7, 8), default=8)
    modbus.add_argument("--parity", choices=("N", "E", "O"), default="N")
    modbus.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    modbus.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="VENDOR/MODEL",
        help="serve a firmware profile (repeatable; pairs with --unit in order)",
    )
    modbus.add_argument(
        "--unit",
        action="append",
        type=int,
        default=[],
        help="unit id of the profile at the same position (default 1, 2, …)",
    )
    modbus.add_argument(
        "-c",
        "--config",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="serve the Modbus devices of a YAML file of fieldgate documents (repeatable)",
    )
    modbus.add_argument("--static", action="store_true", help="keep values still instead of animating them")
    modbus.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    modbus.add_argument(
        "--write-layout",
        type=Path,
        metavar="FILE",
        help="write the units' register layout for the C simulator (plugins/modbus/sim/modbus_sim.c) and exit",
    )


def build_units(args: argparse.Namespace) -> list[SimUnit]:
    if len(args.unit) > len(args.profile):
        raise ConfigError("more --unit than --profile arguments")
    units_ids = args.unit + list(range(len(args.unit) + 1, len(args.profile) + 1))
    units = units_from_profiles(zip(args.profile, units_ids, strict=True), animate=not args.static)
    for path in args.config:
        units.extend(units_from_documents(path, animate=not args.static))
    if not units:
        raise ConfigError("nothing to simulate: give --profile VENDOR/MODEL or -c FILE")
    return units


async def serve(args: argparse.Namespace) -> None:
    units = build_units(args)
    if args.write_layout is not None:
        args.write_layout.write_text(register_layout(units))
        return
    simulator = ModbusSimulator(units)
    async with simulator:
        if args.serial:
            await simulator.start_serial(
                RtuConfig(
                    port=args.serial,
                    baudrate=args.baudrate,
                    bytesize=args.bytesize,
                    parity=args.parity,
                    stopbits=args.stopbits,
                )
            )
            where = f"rtu://{args.serial} at {args.baudrate} baud"
        else:
            host, _, port = args.listen.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--listen: expected HOST:PORT, got {args.listen!r}")
            bound = await simulator.start_tcp(host, int(port))
            where = f"tcp://{host}:{bound}"
        served = ", ".join(f"unit {u.unit} ({len(u.points)} points)" for u in simulator.units.values())
        print(f"simulating {served} on {where}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(args))
    except ConfigError as exc:
        print(f"fieldgate sim modbus: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"fieldgate sim modbus: {exc}", file=sys.stderr)
        return 1
    return 0
