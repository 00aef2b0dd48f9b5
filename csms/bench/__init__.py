"""Benchmarks: every figure is measured next to a baseline in the same run.

``python -m csms.bench`` runs them all (``suite``) and writes ``docs/benchmarks.{md,json}`` and
the plots; ``--quick`` is the smoke size the test suite runs. Modules:

* ``ocpp_throughput`` (+ ``load``, ``servers``): MeterValues per server CPU-second vs a raw echo
  server and the ``ocpp`` package;
* ``connections``: chargers held and RSS per connection, with and without deflate, vs raw websockets;
* ``steady``: a steady fleet's CALL→CALLRESULT and CALL→row-committed percentiles;
* ``storm``: reconnect storms (connections dropped, server restarted);
* ``ingest.bench`` (in the ingest package, run as a process): ingest rows/s vs raw COPY;
* ``fleet`` / ``fleet_client``: the benchmarks' own minimal load generator (many chargers per process);
* ``common``, ``machine``, ``summary``, ``document``, ``plots``: shared helpers and the report.
"""
