"""What a registry role may do: a fixed catalogue of permissions, each guarding one kind of reading or change, and the
three built-in roles as sets of them (viewer reads, operator also acts on what runs, admin holds every permission).
Custom roles are other sets of the same permissions (gateway.registry.roles); every check at the registry asks for a
permission, never for a rank."""

from __future__ import annotations

from collections.abc import Iterable

# name → what it allows, in the order the role forms list them (reading first, then acting, then changing)
PERMISSIONS: dict[str, str] = {
    "nodes.read": "see nodes and groups: status, labels, plots, events and the node's log",
    "devices.read": "see devices with their twins, device models and the desired values' delivery",
    "apps.read": "see workloads and batch workloads, where they run, their versions, events and logs",
    "configs.read": "see config items and secrets (a secret's values stay hidden)",
    "routes.read": "see endpoints and routes with their counters per node",
    "upgrades.read": "see upgrade tasks and the status of every node in them",
    "files.read": "see and download files sent to nodes and received from them, with each node's progress",
    "devices.write": "set desired values of device properties",
    "apps.operate": "start, stop, restart and roll back workloads and batch workloads",
    "messages.send": "send messages to the rest routes of nodes",
    "files.write": "push files to nodes and groups and delete files",
    "nodes.manage": "change a node's alias, labels, scheduling and workspace; remove nodes",
    "groups.manage": "create, change and delete node groups",
    "join.manage": "make and revoke join tokens and batch bundles",
    "devices.manage": "create, change, bind and delete device models and devices",
    "apps.deploy": "create, change and delete workloads and batch workloads",
    "apps.privileged": "run workloads privileged: apply one, or roll back to a version that is",
    "configs.write": "create, change and delete config items and secrets",
    "routes.write": "create, change and delete endpoints and routes",
    "upgrades.run": "start and stop upgrade tasks",
    "users.manage": "add, change and remove registry users and reset their passwords",
    "tokens.manage": "create and revoke API tokens",
    "roles.manage": "create, change and delete custom roles",
    "workspaces.manage": "create workspaces and folders and move workspaces between folders",
    "audit.read": "read the audit log",
}

VIEWER = frozenset({"nodes.read", "devices.read", "apps.read", "configs.read", "routes.read", "upgrades.read",
                    "files.read"})
OPERATOR = VIEWER | {"devices.write", "apps.operate", "messages.send", "files.write"}
ADMIN = frozenset(PERMISSIONS)
BUILTIN_ROLES: dict[str, frozenset[str]] = {"viewer": VIEWER, "operator": OPERATOR, "admin": ADMIN}
BUILTIN_DESCRIPTIONS = {
    "viewer": "reads what lies in its scope",
    "operator": "as viewer, and sets desired values, sends messages to nodes, pushes and deletes files, starts, stops, "
                "restarts and rolls back workloads",
    "admin": "every permission: as operator, and changes nodes, groups, documents, join tokens and upgrades, manages "
             "users, API tokens, roles and workspaces, reads the audit log",
}

# the permission that changes each kind of registry document
KIND_PERMISSION = {"DeviceModel": "devices.manage", "Device": "devices.manage", "Workload": "apps.deploy",
                   "BatchWorkload": "apps.deploy", "ConfigItem": "configs.write", "Secret": "configs.write",
                   "Endpoint": "routes.write", "Route": "routes.write", "Service": "apps.deploy"}
# the permission that reads each kind
KIND_READ = {"DeviceModel": "devices.read", "Device": "devices.read", "Workload": "apps.read",
             "BatchWorkload": "apps.read", "ConfigItem": "configs.read", "Secret": "configs.read",
             "Endpoint": "routes.read", "Route": "routes.read", "Service": "apps.read"}
DOCUMENT_CHANGES = tuple(dict.fromkeys(KIND_PERMISSION.values()))


# a permission that changes something needs the one that sees it: a role holding the first holds the second
REQUIRES = {"devices.write": "devices.read", "devices.manage": "devices.read", "apps.operate": "apps.read",
            "apps.deploy": "apps.read", "apps.privileged": "apps.read", "configs.write": "configs.read",
            "routes.write": "routes.read",
            "upgrades.run": "upgrades.read", "nodes.manage": "nodes.read", "groups.manage": "nodes.read",
            "messages.send": "nodes.read", "files.write": "files.read"}


def check_permissions(names: Iterable[str]) -> tuple[str, ...]:
    """`names` in catalogue order; ValueError naming the first unknown one (a check that asks for a rank, say)."""
    wanted = set(names)
    unknown = sorted(wanted - PERMISSIONS.keys())
    if unknown:
        raise ValueError(f"unknown permission {unknown[0]!r} (expected one of {', '.join(PERMISSIONS)})")
    return tuple(name for name in PERMISSIONS if name in wanted)


def holders(permission: str) -> list[str]:
    """The built-in roles that hold a permission, lowest first (for refusals: `operator or admin can`)."""
    return [role for role, held in BUILTIN_ROLES.items() if permission in held]
