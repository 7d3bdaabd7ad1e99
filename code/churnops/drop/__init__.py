"""The drop bucket: key rules and events (standard library only, shared with the
Lambda image), storage back ends and exactly-once claims."""
