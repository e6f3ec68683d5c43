"""Shared fixtures for the whole test tree."""

# control_plane, crds, namespace: a real etcd + kube-apiserver, one per session.
pytest_plugins = ["tests.cluster.fixtures"]
