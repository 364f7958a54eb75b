"""The node's files: the files area the registry writes into (`<data dir>/files`, gateway.files.area), the durable
outbox of files the node sends (gateway.files.outbox), and the bandwidth cap both directions share
(gateway.files.bucket). The transfers themselves are the uplink's (gateway.uplink.files)."""

from __future__ import annotations

import collections
from pathlib import Path

# bytes_sent, bytes_received, files_received, files_refused, files_sent, files_sent_refused, chunks_corrupted,
# channel_bytes_sent, channel_bytes_received (the part of the bytes that went over the channel): this process's
# counters, for GET /metrics
COUNTERS: collections.Counter[str] = collections.Counter()


def files_area(data_dir: Path) -> Path:
    """Where the files the registry sends land (workloads get it read-only)."""
    return data_dir / "files"


def transfers_dir(data_dir: Path) -> Path:
    """Bytes on their way: `incoming/<id>` (downloads) and `outbox/<id>` (files to send)."""
    return data_dir / "file-transfers"


def default_outbox_folder(data_dir: Path) -> Path:
    return data_dir / "file-outbox"
