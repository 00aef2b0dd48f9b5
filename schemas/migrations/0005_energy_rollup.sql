-- 0005: energy in the roll-up, and data-quality flags on statuses (issue 11, items 5 and 16).
--
-- Energy per quarter hour is the energy that flowed in it (register samples interpolated
-- linearly, meterStart/meterStop as end points; schemas/port_state.py session_energy), kept
-- next to the state minutes by the same roll-up (ingest/rollup.py). A row exists when the
-- quarter hour has occupancy, charging or energy.
ALTER TABLE port_state_15m ADD COLUMN energy_wh double precision NOT NULL DEFAULT 0;

-- port_state_day.energy_wh is from now on the energy that flowed that station-local day (no
-- longer the energy of the sessions that started that day); energy_solar_wh the part of it in
-- [09:00, 16:00) local time (India's solar hours, MoP EV charging guidelines 2024), so that the
-- India site energy statement reads a row per port and day.
ALTER TABLE port_state_day ADD COLUMN energy_solar_wh double precision NOT NULL DEFAULT 0;

-- The rows rolled up so far have no energy: the next roll-up recomputes everything from the
-- first data (reports meanwhile compute from raw rows, which is slower but never wrong).
DELETE FROM port_state_watermark;

-- A status whose timestamp is implausible (before 2010, more than 5 minutes after it was
-- received, or not representable) is stored at its receive time with the flag set
-- (schemas/events.py FLAG_*_TIMESTAMP) and the charger's timestamp kept as text.
ALTER TABLE connector_status ADD COLUMN quality_flags integer NOT NULL DEFAULT 0;
ALTER TABLE connector_status ADD COLUMN raw_timestamp text NOT NULL DEFAULT '';
-- The same for meter samples.
ALTER TABLE meter_samples ADD COLUMN raw_timestamp text NOT NULL DEFAULT '';
