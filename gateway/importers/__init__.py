"""Importers: turn other systems' device descriptions (KubeEdge CRDs, CSV inventories) into documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImportResult:
    """Documents (plain dicts, ready for YAML) by source file, and one line per warning."""

    documents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def all_documents(self) -> list[dict[str, Any]]:
        return [doc for docs in self.documents.values() for doc in docs]
