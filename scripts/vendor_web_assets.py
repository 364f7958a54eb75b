#!/usr/bin/env python3
"""Copies the browser libraries both web UIs use from their npm packages into gateway/webkit/static and records
where each file came from in gateway/webkit/vendored.json (package, version, tarball, the registry's integrity
hash, each file's SHA-256). The pages load them from /static only: no CDN, nothing fetched by the browser.

    scripts/vendor_web_assets.py            fetch with `npm pack`, check the integrity, copy, record
    scripts/vendor_web_assets.py --check    only check that the copied files are the recorded ones

tests/webkit/test_vendored.py runs the check on every test run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "gateway" / "webkit" / "static"
MANIFEST = REPO / "gateway" / "webkit" / "vendored.json"
# package -> (version, {file in the package: name under /static})
PACKAGES = {
    "uplot": ("1.6.32", {"dist/uPlot.iife.min.js": "uplot.min.js", "dist/uPlot.min.css": "uplot.min.css",
                         "LICENSE": "uplot.LICENSE"}),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(package: str, version: str, files: dict[str, str], work: Path) -> dict[str, object]:
    """`npm pack` the package, check its tarball against the registry's integrity, copy the files; the record."""
    answer = subprocess.run(["npm", "pack", "--json", f"{package}@{version}"], cwd=work, check=True,
                            capture_output=True, text=True, timeout=300)
    [packed] = json.loads(answer.stdout)
    tarball = work / packed["filename"]
    algorithm, _, expected = packed["integrity"].partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{package}@{version}: the tarball does not match the registry's {algorithm} integrity")
    recorded: dict[str, dict[str, str]] = {}
    with tarfile.open(tarball) as archive:
        for inside, name in files.items():
            member = archive.extractfile(f"package/{inside}")
            if member is None:
                raise SystemExit(f"{package}@{version}: no {inside} in the package")
            data = member.read()
            (STATIC / name).write_bytes(data)
            recorded[name] = {"from": inside, "sha256": sha256(data)}
    return {"version": version, "tarball": f"https://registry.npmjs.org/{package}/-/{package}-{version}.tgz",
            "integrity": packed["integrity"], "files": recorded}


def check(static: Path = STATIC, manifest_file: Path = MANIFEST) -> list[str]:
    """What differs between the files under /static and the manifest (nothing when they match)."""
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    problems = []
    for package, (version, files) in PACKAGES.items():
        record = manifest.get(package)
        if record is None or record["version"] != version:
            problems.append(f"{package}: the manifest does not record version {version}")
            continue
        for name in files.values():
            path = static / name
            if not path.exists():
                problems.append(f"{name}: missing")
            elif sha256(path.read_bytes()) != record["files"][name]["sha256"]:
                problems.append(f"{name}: not the file of {package}@{version}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the copied files against the manifest")
    parser.add_argument("--static", type=Path, default=STATIC, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.check:
        manifest = {}
        with tempfile.TemporaryDirectory() as work:
            for package, (version, files) in PACKAGES.items():
                manifest[package] = fetch(package, version, files, Path(work))
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    problems = check(args.static)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
