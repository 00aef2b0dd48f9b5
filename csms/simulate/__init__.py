"""``csms simulate``: a fleet of simulated OCPP 1.6J / 2.0.1 chargers for load, demos and tests.

Pure behaviour (no sockets, no clocks of its own; unit-tested):

* ``config``  — fleet shape, charger behaviour, link options; ``--mix`` and range parsing
* ``fleet``   — deterministic fleet plan: charger profiles, locations, id tokens
* ``curves``  — vehicles and power curves (DC CC/CV taper, flat AC), energy integration
* ``model``   — one charger as a discrete-event state machine: what it sends next and when,
  the offline queue replayed in order, answers to CSMS commands
* ``frames``  — OCPP-J payloads of each version
* ``backoff`` — jittered exponential reconnect back-off and the connect pacer
* ``stats``   — counters and mergeable latency histograms; the JSON summary

Sockets and processes:

* ``link``     — one charger's websocket: connect, boot, send in order, retry, reconnect
* ``runner``   — many chargers in one process (owned tasks, source addresses, pacing)
* ``procs``    — fan-out over worker processes, live progress, the final summary
* ``register`` — the simulated fleet written into our registry
* ``demo``     — the fleet of ``csms run --demo``
* ``command``  — the ``csms simulate`` command line
"""
