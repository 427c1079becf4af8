"""Operator commands (warm, doctor, export/import bundles, pin/gc/verify) and their admin endpoints."""
