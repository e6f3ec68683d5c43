"""Following the workers' breaker endpoints on the event loop."""
