-- 0009: the fleet registry (issue 13 items 3-5): which gateway node holds which charger's websocket.
--
-- node_leases: every gateway node (a `csms serve`/`csms run` process, or one worker of `--workers N`)
-- renews its row every lease_renew_s with expires_at = now() + lease_s. A node whose lease has expired
-- is dead: a janitor on any live node publishes a "disconnected" (reason node_lost) for each of its
-- rows and deletes them and the lease. `incarnation` tells a process's own lease from one a later
-- process with the same node id took (a restart) or re-took after it was declared dead.
--
-- live_connections: one row per charger with a registered websocket somewhere; the highest
-- connection epoch wins (a newer websocket replaces the older one wherever it is, OCPP-J; R28).
-- prev_node_id/prev_epoch keep the holder the last upsert replaced, so that the upsert can return it
-- atomically (RETURNING sees only the new row version): that node is told to close its old socket.
--
-- A fleet view is live_connections joined with the unexpired leases. Both tables are UNLOGGED: they
-- describe sockets, which do not survive the processes holding them either; after a PostgreSQL crash
-- (or a failover: unlogged tables are not replicated) they are empty, and each node re-inserts its
-- lease and its connections at its next renewal (csms/gateway/fleet.py). No WAL for a reconnect storm.
CREATE UNLOGGED TABLE node_leases (
    node_id      text PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 64),
    incarnation  uuid NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE UNLOGGED TABLE live_connections (
    charge_point_id  text PRIMARY KEY,
    node_id          text NOT NULL,
    connection_epoch bigint NOT NULL,
    ocpp_version     text NOT NULL,
    remote           text NOT NULL DEFAULT '',
    connected_at     timestamptz NOT NULL,
    prev_node_id     text,
    prev_epoch       bigint
);
-- The janitor and a restarting node read one node's rows.
CREATE INDEX live_connections_node_idx ON live_connections (node_id);
