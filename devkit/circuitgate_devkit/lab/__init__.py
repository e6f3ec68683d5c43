"""A laboratory on loopback: real brokers and real ``celery worker`` processes.

Used by the integration tests, ``make demo`` and the benchmarks, so all three exercise
the same parts the same way. Needs the ``dev`` extra (moto) and ``redis-server``.
"""
