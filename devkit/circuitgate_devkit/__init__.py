"""circuitgate's development kit: real brokers, lab workers, a control plane, fake endpoints.

Used by the tests, ``make demo``, the benchmarks and ``hack/``; installed only by the dev
setup (``make setup``), never with the ``circuitgate`` or ``circuitgate-operator``
distributions, and nothing they ship imports it.
"""
