"""The fleet: queue figures, worker nodes, scaling advice and task timing.

``figures`` reads the broker, the workers' counters and Celery ``inspect``;
``signals`` keeps the per-task counters the figures read; ``api``/``urls``
and ``admin`` (the fleet page) show them.
"""
