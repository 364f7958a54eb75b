"""The endpoint types the loaded plugins serve: route targets (`register_sinks`), endpoints plugins serve themselves
(`register_endpoint_types`) and the core's sources, by name."""

from __future__ import annotations

import msgspec
import pluggy

from gateway.errors import PluginError
from gateway.resources.endpoints import CORE_SOURCES, EndpointType
from gateway.sinks.base import Sink


def sink_registry(pm: pluggy.PluginManager) -> dict[str, type[Sink]]:
    """Sink classes by the endpoint type they serve; two plugins serving one type is an error."""
    registry: dict[str, type[Sink]] = {}
    for plugin_classes in pm.hook.register_sinks():
        for cls in plugin_classes:
            name = getattr(cls, "name", None)
            properties = getattr(cls, "properties_type", None)
            if not isinstance(name, str) or not (isinstance(properties, type)
                                                 and issubclass(properties, msgspec.Struct)):
                raise PluginError(f"sink {cls!r} needs a `name` (its endpoint type) and a `properties_type` "
                                  "(a msgspec Struct)")
            if name in registry and registry[name] is not cls:
                raise PluginError(f"endpoint type {name!r} is served by both {registry[name]!r} and {cls!r}")
            registry[name] = cls
    return registry


def endpoint_registry(pm: pluggy.PluginManager) -> dict[str, EndpointType]:
    """Every endpoint type by name, as the loader checks Endpoint and Route documents against them."""
    registry = dict(CORE_SOURCES)
    for name, cls in sink_registry(pm).items():
        target = EndpointType(name, cls.properties_type, target_resource=cls.target_resource,
                              target_resource_optional=cls.target_resource_optional, older_form=cls.older_form,
                              older_form_topic=cls.older_form_topic, description=cls.description,
                              provider=cls.__module__)
        source = registry.get(name)
        if source is not None:  # a route target for a type the core serves as a source: one type, both roles
            if source.properties is not cls.properties_type:
                raise PluginError(f"sink {cls!r}: endpoint type {name!r} takes the core's properties "
                                  f"{source.properties.__name__}")
            target = EndpointType(name, source.properties, source_resource=source.source_resource,
                                  target_resource=cls.target_resource,
                                  target_resource_optional=cls.target_resource_optional,
                                  description=source.description, provider=cls.__module__)
        registry[name] = target
    for served in pm.hook.register_endpoint_types():
        for endpoint_type in served:
            if not isinstance(endpoint_type, EndpointType):
                raise PluginError(f"register_endpoint_types returned {endpoint_type!r}, not an EndpointType")
            if endpoint_type.name in registry:
                raise PluginError(f"endpoint type {endpoint_type.name!r} is served twice "
                                  f"({registry[endpoint_type.name].provider} and {endpoint_type.provider})")
            if endpoint_type.is_target or endpoint_type.source_resource is not None:
                raise PluginError(f"endpoint type {endpoint_type.name!r}: a route target is a sink "
                                  "(register_sinks); the core serves the sources")
            registry[endpoint_type.name] = endpoint_type
    return registry
