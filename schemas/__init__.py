"""The contract between the central system (``csms``) and the ingest worker (``ingest``).

Both sides import this package and never each other. It holds:

* ``events``: the versioned, version-neutral bus events (msgspec structs);
* ``bus``: the small bus interface and the in-process implementation;
* ``migrations/``: ordered SQL files, applied by ``migrate.apply_migrations``;
* ``settings``: the typed, frozen settings object every role is started with.
"""

EVENT_SCHEMA_VERSION = 1
