"""The C router backend: TopicRouter over the trie in native/router.c (see gateway.native)."""

from __future__ import annotations

from gateway.native import TopicRouter

__all__ = ["TopicRouter"]
