"""`modmesh warm`: the modules a project needs, fetched into a node ahead of time."""
