"""Shared fixtures for the whole test tree."""

# control_plane, crds, namespace: a real etcd + kube-apiserver, one per session.
# node_cluster: a control plane with one real node (kubelet + containerd), one per session.
pytest_plugins = ["circuitgate_devkit.cluster.fixtures", "circuitgate_devkit.node.fixtures"]
