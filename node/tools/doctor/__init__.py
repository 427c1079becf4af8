"""`modmesh doctor`: the client set-up, the node and its upstreams, diagnosed."""
