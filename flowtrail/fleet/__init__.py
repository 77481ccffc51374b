"""Serving a fleet: the server's own certificate authority, agents pinning it, per-agent
tokens (`flowtrail token`), read access from other hosts, systemd units (`flowtrail
install-units`). docs/fleet.md tells the whole story."""
