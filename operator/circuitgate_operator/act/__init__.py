"""The thin layer that talks to the Kubernetes API: requests, Events, applying plans."""
