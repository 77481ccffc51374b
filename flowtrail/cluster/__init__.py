"""Cluster mode: many collector nodes per region over NATS JetStream (docs/cluster.md)."""
