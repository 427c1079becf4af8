"""modmesh node: a caching GOPROXY that verifies everything it stores and serves."""
