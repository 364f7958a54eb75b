"""The Litestar application both web apps are: with the plugins they use and no others."""

from __future__ import annotations

from litestar import Litestar
from litestar.plugins import PluginProtocol
from litestar.plugins.core import MsgspecDIPlugin


class Application(Litestar):
    """Litestar adds pydantic's and attrs' plugins wherever those packages are installed, for whatever else needs
    them; that imported pydantic into the gateway (7 MB of memory) though no route takes or gives a pydantic model.
    The apps' bodies are msgspec Structs: its plugin is the one they need."""

    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        return [*plugins, MsgspecDIPlugin()]
