"""modmesh mesh: discovery, gossip and verified peer transfer between nodes.

Uses `node`; `node` never imports this package (it exposes `node.hooks` instead).
"""
