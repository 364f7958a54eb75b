"""The node's side of the wire is tested against a real registry: the registry and PostgreSQL fixtures of
tests/registry, shared here."""

from __future__ import annotations

from tests.registry.conftest import db_url, pg_database, postgres, registry

__all__ = ["db_url", "pg_database", "postgres", "registry"]
