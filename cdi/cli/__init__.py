"""The ``cdi`` command (kubectl/virtctl-like) for the embedded backend.

Modules: ``main`` (argparse wiring, error reporting), ``context`` (flags, streams, the store,
lazy access to the backend config and the controller daemon), ``kinds`` (the kind table:
aliases -> KindInfo with table columns; extend it with ``kinds.register``), ``printers``
(kubectl-style tables, ages, json/yaml, describe layout), ``manifests`` (``-f`` loading),
and one module per command group: ``apply``, ``create``, ``get``, ``describe``, ``delete``,
``wait``, ``logs``, ``controller``.
"""
