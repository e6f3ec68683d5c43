"""Pure decisions: observed objects in, intended changes out; no I/O, tested without a cluster."""
