"""A real node for tests, without Docker or a registry: kubelet, containerd and runc in a
network namespace of the run's own, beside the control plane, and images packed locally."""
