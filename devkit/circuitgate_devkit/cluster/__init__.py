"""The cluster half of the dev kit: a control plane from Go modules, the chart's accounts,
the operator as a process, fake worker endpoints and the objects a scenario creates."""
