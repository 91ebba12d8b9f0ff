"""edgekit's device side: the agent, the spool protocol, bundle checks and backends.

Runs on a Jetson with only numpy and the JetPack bindings, so it imports neither torch nor
``edgekit.host`` and stays Python 3.8 compatible (``vermin`` checks that in ``make test``).
"""

__version__ = "0.1.0"
