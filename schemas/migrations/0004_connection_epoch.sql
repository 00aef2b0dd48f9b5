-- 0004: connection epochs (issue 11 item 2). Each admitted websocket of a charger gets the next
-- value of its charge_points.connection_epoch (allocated by the gateway before the upgrade, so
-- every node sharing the database agrees), and its connected/disconnected events carry it.
-- When a charger reconnects while its old socket is still open (OCPP-J: the newer connection
-- replaces the older one), the old "disconnected" may be stored after the new "connected";
-- the epoch says it belongs to the replaced socket. The rule (README, "connection epochs"):
-- per charger, in time order, the state is that of the highest epoch seen so far; a
-- "disconnected" of a lower epoch changes nothing. Rows from before this migration have a
-- NULL epoch and are read in time order as before.
ALTER TABLE charge_points ADD COLUMN connection_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE connection_events ADD COLUMN connection_epoch bigint;
-- Reports read a charger's state at a window's start: the row of the highest epoch before t0,
-- latest first (csms/reporting/queries.py); without this index every earlier row is sorted.
CREATE INDEX connection_events_cp_epoch_idx ON connection_events (charge_point_id, connection_epoch DESC, time DESC)
    WHERE connection_epoch IS NOT NULL;
