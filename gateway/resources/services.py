"""What a Service means, shared by the node and the registry: the workloads behind it and an instance's port for
each of its ports."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.resources.schema import Service, ServicePort, Workload


def port_key(port: ServicePort) -> str:
    """How an endpoint names a service port: its name, or its number when it has none."""
    return port.name or str(port.port)


def selects(service: Service, namespace: str, name: str, labels: Mapping[str, str], source: str = "") -> bool:
    """Whether a workload (`source`: the BatchWorkload it comes from, if any) is behind a service."""
    if namespace != service.namespace:
        return False
    if service.workload is not None:
        return service.workload in (name, source)
    return all(labels.get(key) == value for key, value in service.selector.items())


def instance_port(port: ServicePort, workload: Workload, ports: Mapping[str, int]) -> int | None:
    """The port an instance (its ports by name, as the node gave them) takes a service port's traffic on; None when
    a named target port is not one of the workload's."""
    target = port.target_port if port.target_port is not None else port.port
    if isinstance(target, str):
        return ports.get(target)
    for mapping in workload.ports:  # a number: a port the workload maps (inside a container, or on the host)
        if target in (mapping.container_port, mapping.host_port) and mapping.name in ports:
            return ports[mapping.name]
    return target


def instance_ports(service: Service, workload: Workload, ports: Mapping[str, int]) -> dict[str, int]:
    """An instance's port for each service port it serves, by port_key."""
    found = {port_key(port): instance_port(port, workload, ports) for port in service.ports}
    return {key: value for key, value in found.items() if value is not None}
