"""circuitgate_operator: watches worker pods' circuit breakers and acts on them in the cluster.

Run it as ``python -m circuitgate_operator`` (or ``circuitgate-operator``, or
``kopf run -m circuitgate_operator.handlers``). It never imports the worker library
``circuitgate``: the two share only the breaker-state document's JSON Schema.
"""
