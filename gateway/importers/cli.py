"""`fieldgate import kubeedge|kubernetes|csv …`: a built-in plugin registering the import command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError, ResourceError
from gateway.importers import ImportResult, kubeedge, kubernetes
from gateway.importers import csv as csv_import

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def configure(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    kube = sources.add_parser(
        "kubeedge", help="KubeEdge DeviceModel/Device (v1beta1, v1alpha2) and RuleEndpoint/Rule manifests"
    )
    kube.add_argument("files", nargs="+", type=Path, metavar="FILE")
    kube.add_argument("-o", "--output", type=Path, metavar="DIR", help="write one YAML file per input here")
    k8s = sources.add_parser(
        "kubernetes", help="apps/v1 Deployment and KubeEdge EdgeApplication manifests (with their ConfigMaps and "
                           "Secrets) as Workload and BatchWorkload documents"
    )
    k8s.add_argument("files", nargs="+", type=Path, metavar="FILE")
    k8s.add_argument("-o", "--output", type=Path, metavar="DIR", help="write one YAML file per input here")
    k8s.add_argument("--runtime", default="container", metavar="NAME",
                     help="the runtime of the workloads (default container; process runs `command` on the node)")
    table = sources.add_parser("csv", help="one device per row: name, model or profile, address, unit, labels")
    table.add_argument("file", type=Path, metavar="FILE")
    table.add_argument(
        "--template",
        type=Path,
        metavar="DEVICE.yaml",
        help="a Device document whose properties rows with a `model` copy",
    )
    table.add_argument("-o", "--output", type=Path, metavar="DIR", help="write the YAML file here")


def run(args: argparse.Namespace) -> int:
    try:
        if args.import_source == "kubeedge":
            result = kubeedge.import_files(list(args.files))
        elif args.import_source == "kubernetes":
            result = kubernetes.import_files(list(args.files), runtime=args.runtime)
        else:
            template = _template(args.template) if args.template else None
            result = csv_import.import_file(args.file, template=template, progress=csv_import.stderr_progress())
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        write(result, args.output)
    except ResourceError as exc:
        for problem in exc.problems:
            print(f"fieldgate import: {problem}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"fieldgate import: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fieldgate import: {exc}", file=sys.stderr)
        return 2
    return 0


def _template(path: Path) -> dict[str, Any]:
    try:
        documents = [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_SafeLoader) if d]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "Device":
            return document
    raise ConfigError(f"{path}: no Device document to use as a template")


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(documents, Dumper=_SafeDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write(result: ImportResult, output: Path | None) -> None:
    """Print the documents as YAML, or write one file per source into `output`."""
    if output is None:
        sys.stdout.write(dump(result.all_documents()))
        return
    output.mkdir(parents=True, exist_ok=True)
    for source, documents in result.documents.items():
        if not documents:
            continue
        target = output / f"{Path(source).stem}.yaml"
        target.write_text(dump(documents), encoding="utf-8")
        print(f"wrote {target} ({len(documents)} documents)", file=sys.stderr)
