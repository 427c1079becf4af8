"""The operator tools, registered by import: their commands (`modmesh warm`, `doctor`,
`pin`/`gc`/`verify`, `export`/`import`) and the admin endpoints they serve on a running
node, with the dashboard's page. mypy checks that each listed module has what its
list needs (node.plugins.Commands, node.service.AdminRoutes)."""

from __future__ import annotations

from node.plugins import Commands
from node.server import dashboard
from node.service import AdminRoutes
from node.tools import storage
from node.tools.bundle import admin as bundle_admin
from node.tools.bundle import commands as bundle_commands
from node.tools.doctor import node as doctor_node
from node.tools.doctor import report as doctor_report
from node.tools.warm import command as warm_command

#: Subcommands of `modmesh` besides `serve`.
COMMANDS: tuple[Commands, ...] = (warm_command, doctor_report, storage, bundle_commands)
#: What a serving node adds to its routes: `/_admin/...` and the dashboard.
ADMIN: tuple[AdminRoutes, ...] = (dashboard, doctor_node, storage, bundle_admin)
