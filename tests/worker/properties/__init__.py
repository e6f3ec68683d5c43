"""Properties of the worker side, checked by hypothesis over real processes."""
