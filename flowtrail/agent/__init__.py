"""The per-host agent (FlowExporter): eBPF capture, local identity, NAT resolution, export."""
