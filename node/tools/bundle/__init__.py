"""Bundles: `modmesh export` / `modmesh import`, carrying modules across an air gap."""
