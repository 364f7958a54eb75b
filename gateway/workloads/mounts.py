"""What an instance uses of the node besides its files: volumes (host paths, persistent, scratch) and host devices,
checked before it starts so a missing device or a refused path is a clear reason naming the field."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from gateway.errors import WorkloadError
from gateway.resources.schema import Workload, WorkloadSettings
from gateway.resources.workload_checks import host_path_problem

VOLUMES_DIR = "volumes"  # <data dir>/volumes/<namespace>/<workload>/<volume>: outside the upgrade slots
SCRATCH_DIR = "scratch"  # <instance dir>/scratch/<volume>: goes with the instance


def env_name(volume: str) -> str:
    return "FIELDGATE_VOLUME_" + volume.upper().replace("-", "_")


def persistent_dir(data_dir: Path, workload: Workload, volume: str) -> Path:
    return data_dir / VOLUMES_DIR / workload.namespace / workload.name / volume


def _own(path: Path, workload: Workload) -> None:
    """Hand a directory the gateway made to the user the app runs as, so it may write there."""
    uid, gid = workload.secured.run_as_user, workload.secured.run_as_group
    if uid is not None or gid is not None:
        with contextlib.suppress(OSError):
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def volume_dirs(data_dir: Path, workload: Workload, work_dir: Path, settings: WorkloadSettings) -> dict[str, Path]:
    """The host path of every volume by name, made where the node keeps it; WorkloadError naming the field."""
    found: dict[str, Path] = {}
    for i, volume in enumerate(workload.volumes):
        where = f"$.volumes[{i}]"
        if volume.host_path is not None:
            problem = host_path_problem(volume.host_path, settings)
            if problem is not None:
                raise WorkloadError(f"{where}.host_path: {problem}")
            path = Path(volume.host_path)
            if not path.exists():
                raise WorkloadError(f"{where}.host_path: {volume.host_path} does not exist on this node")
        else:
            path = (persistent_dir(data_dir, workload, volume.name) if volume.persistent
                    else work_dir / SCRATCH_DIR / volume.name)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkloadError(f"{where}: cannot make {path}: {exc.strerror or exc}") from exc
            _own(path, workload)
        found[volume.name] = path
    return found


def check_devices(workload: Workload) -> None:
    """Every device exists, is a character or block device and allows what its permissions ask (as the gateway)."""
    for i, device in enumerate(workload.devices):
        where = f"$.devices[{i}].path"
        try:
            mode = os.stat(device.path).st_mode
        except OSError as exc:
            raise WorkloadError(f"{where}: {device.path}: {exc.strerror or exc}") from None
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise WorkloadError(f"{where}: {device.path} is not a character or block device")
        for letter, flag, what in (("r", os.R_OK, "readable"), ("w", os.W_OK, "writable")):
            if letter in device.permissions and not os.access(device.path, flag):
                raise WorkloadError(f"{where}: {device.path} is not {what} (permissions {device.permissions})")


def own_files(work_dir: Path, workload: Workload) -> None:
    """A process run as another user reads its files: the instance's directory and files become its own."""
    if workload.secured.run_as_user is None and workload.secured.run_as_group is None:
        return
    for root, dirs, files in os.walk(work_dir):
        _own(Path(root), workload)
        for name in (*dirs, *files):
            _own(Path(root) / name, workload)
