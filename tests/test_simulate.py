"""The fleet simulator: its pure behaviour without sockets, then a small run against a real
central system (both OCPP versions, two worker processes) checked in the database."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from csms.ocpp.validation import validate
from csms.simulate import curves
from csms.simulate.backoff import Backoff, Pacer
from csms.simulate.config import (
    Behaviour,
    FleetShape,
    SimulationConfigError,
    parse_mix,
    parse_range,
    read_credentials,
    source_address_range,
)
from csms.simulate.fleet import ChargerProfile, plan_fleet, plan_locations, token_pool
from csms.simulate.model import ChargerModel, Outgoing
from csms.simulate.stats import LatencyHistogram, Stats, merge, summary
from tests.central import running_central

START = 1_760_000_000.0     # a fixed power-on time: schedules are compared across runs
QUICK = Behaviour(meter_interval_s=30.0, first_plug_in_s=(0.0, 60.0), session_s=(300.0, 1200.0),
                  idle_s=(60.0, 600.0), fault_rate_per_h=0.5, fault_s=(60.0, 120.0), offline_rate_per_h=0.5,
                  offline_s=(60.0, 120.0))


# -- a central system that answers at once, in memory -----------------------------------------

class InstantCentral:
    """Answers every CALL like our central system would, without sockets; records what was sent."""

    def __init__(self) -> None:
        self.tx_ids = itertools.count(1)
        self.sent: list[tuple[str, str, float, dict[str, Any]]] = []   # (charger, action, time, payload)

    def answer(self, model: ChargerModel, msg: Outgoing, payload: dict[str, Any]) -> dict[str, Any]:
        action = msg.action
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": "2025-10-09T08:53:20Z", "interval": 300}
        if action == "StartTransaction":
            return {"transactionId": next(self.tx_ids), "idTagInfo": {"status": "Accepted"}}
        if action == "Authorize":
            key = "idTagInfo" if model.version == "1.6" else "idTokenInfo"
            return {key: {"status": "Accepted"}}
        if action == "Heartbeat":
            return {"currentTime": "2025-10-09T08:53:20Z"}
        return {}

    def drive(self, model: ChargerModel, until: float, *, connected: bool = True) -> None:
        """Advance ``model`` to ``until`` (charger time), sending everything at once while connected."""
        now = model.horizon
        if connected and not model.connected:
            model.on_connected(now)
        while True:
            if model.booted_once or not connected:
                model.advance(now)
            while (msg := model.head(now)) is not None:
                payload = model.materialize(msg)
                validate(model.version, msg.action, payload)
                self.sent.append((model.profile.id, msg.action, now, payload))
                model.on_result(msg, self.answer(model, msg, payload), now)
                model.advance(now)
            if now >= until:
                return
            now = min(until, max(model.next_wakeup(), now + 1e-3))


def run_fleet(shape: FleetShape, behaviour: Behaviour, hours: float) -> list[tuple[str, str, float, dict[str, Any]]]:
    central = InstantCentral()
    for profile in plan_fleet(shape):
        model = ChargerModel(profile, behaviour, start=START, tokens=tuple(token_pool(shape)), seed=shape.seed)
        central.drive(model, START + hours * 3600)
    return central.sent


def profile(version: str, *, dc: bool = False, evses: int = 2, index: int = 0) -> ChargerProfile:
    return ChargerProfile(index=index, id=f"T-{index}", version=version, evses=evses, dc=dc,
                          rated_power_w=150_000.0 if dc else 22_000.0, location_id="L", vendor="V", model="M",
                          serial_number="S", firmware_version="F")


# -- configuration and fleet plan --------------------------------------------------------------

def test_mix_and_ranges_are_parsed_and_checked() -> None:
    assert parse_mix("16=0.7,201=0.3") == (("1.6", 0.7), ("2.0.1", 0.3))
    assert parse_mix("2.0.1=1,1.6=3") == (("1.6", 0.75), ("2.0.1", 0.25))
    assert parse_mix("201=1") == (("2.0.1", 1.0),)
    for bad in ("15=1", "16", "16=x", "16=0,201=0", "16=-1"):
        with pytest.raises(SimulationConfigError):
            parse_mix(bad)
    assert parse_range("600-3600", name="x") == (600.0, 3600.0)
    assert parse_range("5", name="x") == (5.0, 5.0)
    with pytest.raises(SimulationConfigError):
        parse_range("9-3", name="x")
    assert source_address_range(3) == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert source_address_range(2, first="127.0.0.255") == ("127.0.0.255", "127.0.1.0")
    assert read_credentials("# id,password\nCP-1,secret-password-0001\n\nCP-2, other-password-0002 \n") == \
        {"CP-1": "secret-password-0001", "CP-2": "other-password-0002"}
    with pytest.raises(SimulationConfigError):
        read_credentials("CP-1\n")


def test_fleet_plan_is_deterministic_with_exact_version_counts() -> None:
    shape = FleetShape(count=10, mix=parse_mix("16=0.7,201=0.3"), seed=5, evses=(1, 4))
    fleet = plan_fleet(shape)
    assert fleet == plan_fleet(shape)
    assert Counter(p.version for p in fleet) == {"1.6": 7, "2.0.1": 3}
    assert all(1 <= p.evses <= 4 for p in fleet)
    assert [p.id for p in fleet] == [f"SIM-{i:05d}" for i in range(10)]
    locations = {loc.id: loc for loc in plan_locations(shape)}
    assert {p.location_id for p in fleet} <= set(locations)
    other = plan_fleet(FleetShape(count=10, mix=parse_mix("16=0.7,201=0.3"), seed=6, evses=(1, 4)))
    assert [(p.version, p.evses, p.dc) for p in other] != [(p.version, p.evses, p.dc) for p in fleet]
    demo = plan_locations(FleetShape(count=15, locations=3))
    assert [loc.time_zone for loc in demo] == ["Asia/Kolkata", "America/Los_Angeles", "Europe/Berlin"]
    assert len({(loc.latitude, loc.longitude) for loc in plan_locations(FleetShape(count=400))}) == 20


# -- behaviour ---------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_schedule_of_events() -> None:
    shape = FleetShape(count=6, mix=parse_mix("16=1,201=1"), seed=11)
    first = run_fleet(shape, QUICK, hours=6)
    again = run_fleet(shape, QUICK, hours=6)
    assert first == again
    actions = Counter(a for _, a, _, _ in first)
    assert actions["StartTransaction"] > 0
    assert actions["TransactionEvent"] > 0
    assert actions["MeterValues"] > 0
    assert actions["Heartbeat"] > 0
    other = run_fleet(FleetShape(count=6, mix=parse_mix("16=1,201=1"), seed=12), QUICK, hours=6)
    assert [(c, a, t) for c, a, t, _ in other] != [(c, a, t) for c, a, t, _ in first]


def _readings(sent: list[tuple[str, str, float, dict[str, Any]]]) -> Iterator[tuple[str, int, str, str, float]]:
    """(charger, evse, timestamp, measurand, value) of every sampled value sent."""
    evse_of_tx: dict[tuple[str, str], int] = {}
    for cp, action, _, p in sent:
        if action == "MeterValues":
            for mv in p["meterValue"]:
                for sv in mv["sampledValue"]:
                    yield cp, p["connectorId"], mv["timestamp"], sv["measurand"], float(sv["value"])
        elif action == "TransactionEvent":
            tx = p["transactionInfo"]["transactionId"]
            if "evse" in p:
                evse_of_tx[(cp, tx)] = p["evse"]["id"]
            for mv in p.get("meterValue", []):
                for sv in mv["sampledValue"]:
                    yield cp, evse_of_tx[(cp, tx)], mv["timestamp"], sv["measurand"], float(sv["value"])


def test_energy_registers_never_decrease_and_soc_stays_bounded() -> None:
    shape = FleetShape(count=8, mix=parse_mix("16=1,201=1"), seed=3, dc_share=0.5)
    sent = run_fleet(shape, QUICK, hours=8)
    registers: dict[tuple[str, int], list[tuple[str, float]]] = {}
    socs = []
    for cp, evse, ts, measurand, value in _readings(sent):
        if measurand == "Energy.Active.Import.Register":
            registers.setdefault((cp, evse), []).append((ts, value))
        elif measurand == "SoC":
            socs.append(value)
    assert registers
    assert socs
    for series in registers.values():
        values = [v for _, v in sorted(series)]
        assert values == sorted(values), "an energy register went backwards"
    assert max(registers[k][-1][1] - registers[k][0][1] for k in registers) > 0, "no energy was delivered"
    assert all(0 <= s <= 100 for s in socs)
    # InstantCentral numbers transactions in the order of the StartTransactions it answered.
    meter_start = {n: p["meterStart"] for n, p in
                   enumerate((p for _, a, _, p in sent if a == "StartTransaction"), start=1)}
    stops = [p for _, a, _, p in sent if a == "StopTransaction"]
    assert meter_start
    assert stops
    assert all(p["meterStop"] >= meter_start[p["transactionId"]] for p in stops)
    assert all(v < 2**31 for v in meter_start.values()), "1.6 meter readings are 32-bit integers"


def test_power_curves_cc_cv_for_dc_flat_for_ac() -> None:
    car = curves.Vehicle(capacity_wh=60_000, max_dc_power_w=120_000, onboard_ac_w=11_000, knee_soc=60.0)
    assert curves.dc_power_w(30, charger_w=150_000, vehicle=car) == 120_000
    assert curves.dc_power_w(30, charger_w=50_000, vehicle=car) == 50_000
    taper = [curves.dc_power_w(soc, charger_w=150_000, vehicle=car) for soc in range(60, 101, 5)]
    assert taper == sorted(taper, reverse=True)
    assert taper[0] == 120_000
    assert taper[-1] == 0
    assert curves.dc_power_w(99.0, charger_w=150_000, vehicle=car) == pytest.approx(120_000 * curves.TRICKLE_SHARE)
    assert {curves.ac_power_w(soc, charger_w=22_000, vehicle=car) for soc in (0, 50, 99.9)} == {11_000}
    assert curves.ac_power_w(100, charger_w=22_000, vehicle=car) == 0
    soc, wh = curves.integrate(20.0, 3600, dc=False, charger_w=22_000, vehicle=car)
    assert wh == pytest.approx(11_000)
    assert soc == pytest.approx(20 + 11_000 / 60_000 * 100)
    soc, wh = curves.integrate(20.0, 10 * 3600, dc=True, charger_w=150_000, vehicle=car, soc_limit=80.0)
    assert soc == 80.0
    assert wh == pytest.approx(0.6 * 60_000)


def test_transaction_messages_queue_while_offline_and_replay_in_order() -> None:
    for version in ("1.6", "2.0.1"):
        behaviour = Behaviour(meter_interval_s=60.0, first_plug_in_s=(100.0, 100.0), session_s=(1800.0, 1800.0),
                              idle_s=(3600.0, 3600.0), fault_rate_per_h=0, offline_rate_per_h=0)
        model = ChargerModel(profile(version, evses=1), behaviour, start=START, tokens=("TAG1",), seed=1)
        central = InstantCentral()
        central.drive(model, START + 50)                 # booted, statuses sent
        model.on_disconnected(START + 50)                # the link drops before the session starts
        central.drive(model, START + 1000, connected=False)
        queued = list(model.outbox)
        assert queued
        assert all(m.transactional and m.generated_offline for m in queued)
        assert [m.at for m in queued] == sorted(m.at for m in queued)
        if version == "2.0.1":
            assert all(m.payload["offline"] is True for m in queued)
            assert [m.payload["seqNo"] for m in queued] == list(range(len(queued)))
        before = len(central.sent)
        central.drive(model, START + 1000)                # reconnect: replay, then the current statuses
        replayed = central.sent[before:before + len(queued)]
        assert [(a, p.get("timestamp")) for _, a, _, p in replayed] == \
            [(m.action, m.payload.get("timestamp")) for m in queued]
        after = central.sent[before + len(queued):]
        assert [a for _, a, _, _ in after][:1] == ["StatusNotification"]
        if version == "2.0.1":   # the new connection is told the transaction's EVSE again
            assert "evse" in replayed[0][3]
        if version == "1.6":   # the transactionId learnt on replay is used by the messages queued after it
            assert {p["transactionId"] for _, a, _, p in replayed if a != "StartTransaction"} == {1}
        assert model.counters["replayed"] == len(queued)


def test_callerror_retries_a_transaction_message_then_gives_it_up() -> None:
    behaviour = Behaviour(first_plug_in_s=(10.0, 10.0), offline_rate_per_h=0, fault_rate_per_h=0,
                          transaction_attempts=3, transaction_retry_interval_s=5.0)
    model = ChargerModel(profile("2.0.1", evses=1), behaviour, start=START, tokens=("TAG1",), seed=1)
    InstantCentral().drive(model, START + 1)
    model.advance(START + 40)
    while (msg := model.head(START + 40)) is not None and msg.action != "TransactionEvent":
        model.on_result(msg, {}, START + 40)
    assert msg is not None
    assert msg.action == "TransactionEvent"
    model.on_call_error(msg, "InternalError", START + 40)
    assert model.head(START + 41) is None
    assert model.next_wakeup() == START + 45
    assert model.head(START + 45) is msg
    model.on_call_error(msg, "InternalError", START + 45)
    model.on_call_error(msg, "InternalError", START + 50)
    assert model.outbox[0] is not msg if model.outbox else True
    assert model.counters["transaction_messages_dropped"] == 1


def test_reconnect_backoff_is_exponential_with_bounded_jitter() -> None:
    backoff = Backoff(minimum_s=1.0, maximum_s=60.0, random_range_s=5.0, rng=random.Random(1))
    for n in range(12):
        low, high = backoff.bounds(n)
        assert low == min(60.0, 2.0 ** n)
        assert high == low + 5.0
        assert low <= backoff.next_delay_s() <= high
    delays = [Backoff(minimum_s=1.0, maximum_s=60.0, random_range_s=5.0, rng=random.Random(s)).next_delay_s()
              for s in range(50)]
    assert len(set(delays)) == 50, "jitter spreads chargers that failed together"
    backoff.reset()
    assert 1.0 <= backoff.next_delay_s() <= 6.0
    pacer = Pacer(10.0)
    assert [round(pacer.reserve(100.0), 6) for _ in range(4)] == [0.0, 0.1, 0.2, 0.3]
    assert pacer.reserve(200.0) == 0.0


def test_commands_from_the_central_system_are_answered_per_schema() -> None:
    for version in ("1.6", "2.0.1"):
        behaviour = Behaviour(first_plug_in_s=(1e6, 1e6), offline_rate_per_h=0, fault_rate_per_h=0)
        model = ChargerModel(profile(version, evses=2), behaviour, start=START, tokens=("TAG1",), seed=1)
        central = InstantCentral()
        central.drive(model, START + 10)

        def call(action: str, payload: dict[str, Any], model: ChargerModel = model) -> dict[str, Any]:
            validate(model.version, action, payload)
            answer = model.handle_call(action, payload, model.horizon)
            assert answer.payload is not None, (action, answer.error)
            validate(model.version, action, answer.payload, response=True)
            return answer.payload

        if version == "1.6":
            assert call("RemoteStartTransaction", {"connectorId": 2, "idTag": "OPS"})["status"] == "Accepted"
        else:
            assert call("RequestStartTransaction", {"idToken": {"idToken": "OPS", "type": "Central"},
                                                    "remoteStartId": 7, "evseId": 2})["status"] == "Accepted"
        central.drive(model, START + 20)
        assert model.active_sessions == 1
        if version == "1.6":
            tx = next(p for _, a, _, p in central.sent if a == "StartTransaction")
            assert tx["connectorId"] == 2
            assert tx["idTag"] == "OPS"
            assert call("RemoteStopTransaction", {"transactionId": 1})["status"] == "Accepted"
            assert call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})["status"] == "Accepted"
            assert call("GetConfiguration", {"key": ["HeartbeatInterval", "Nope"]})["unknownKey"] == ["Nope"]
            reset = {"type": "Soft"}
        else:
            started = next(p for _, a, _, p in central.sent if a == "TransactionEvent")
            assert started["triggerReason"] == "RemoteStart"
            assert started["transactionInfo"]["remoteStartId"] == 7
            tx_id = started["transactionInfo"]["transactionId"]
            assert call("RequestStopTransaction", {"transactionId": tx_id})["status"] == "Accepted"
            assert call("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}})["status"] \
                == "Accepted"
            call("GetVariables", {"getVariableData": [{"component": {"name": "X"}, "variable": {"name": "Y"}}]})
            reset = {"type": "Immediate"}
        assert call("TriggerMessage", {"requestedMessage": "Heartbeat"})["status"] == "Accepted"
        assert model.handle_call("UpdateFirmware", {}, model.horizon).error == "NotImplemented"
        central.drive(model, START + 30)
        assert model.active_sessions == 0
        stops = [a for _, a, _, _ in central.sent if a in ("StopTransaction", "TransactionEvent")]
        assert stops[-1:] == ["StopTransaction" if version == "1.6" else "TransactionEvent"]
        statuses = [p for _, a, _, p in central.sent if a == "StatusNotification"]
        assert any(p.get("status", p.get("connectorStatus")) == "Unavailable" for p in statuses)
        assert call("Reset", reset)["status"] == "Accepted"
        model.advance(START + 32)
        assert model.needs_boot()
        assert model.offline_until > START + 32


def test_latency_histogram_percentiles_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        (a if ms % 2 else b).record(ms / 1000)
    stats = Stats()
    stats.latency["X"] = a
    other = Stats()
    other.latency["X"] = b
    stats.sent("X")
    other.error("call_timeout")
    merged = merge([stats.snapshot(), other.snapshot()])
    doc = summary(merged, duration_s=2.0, connected_peak=0, info={})
    assert doc["latency_ms"]["by_action"]["X"]["count"] == 100
    assert doc["latency_ms"]["p50"] == pytest.approx(50, rel=0.06)
    assert doc["latency_ms"]["p99"] == pytest.approx(99, rel=0.06)
    assert doc["errors"] == {"total": 1, "by_kind": {"call_timeout": 1}}


# -- against a real central system ---------------------------------------------------------------

async def _simulate(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "csms", "simulate", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.integration
async def test_simulated_fleet_against_our_central_system_lands_in_the_database(db_url: str) -> None:
    fleet = ["--chargers", "6", "--mix", "16=0.5,201=0.5", "--evses", "1-2", "--seed", "4", "--id-prefix", "SMK-",
             "--password", "smoke-test-password-0001"]
    code, out, err = await _simulate(*fleet, "--register-only", "--database-url", db_url)
    assert code == 0, err
    assert json.loads(out)["registered"]["charge_points"] == 6
    async with running_central(db_url) as central:
        code, out, err = await _simulate(
            *fleet, "--url", central.ws_base, "--duration-s", "8", "--processes", "2", "--connect-rate-per-s", "50",
            "--meter-interval-s", "0.5", "--first-plug-in-s", "0-1", "--session-s", "2-3", "--idle-s", "0.5-1",
            "--handling-s", "0.2-0.5", "--offline-rate-per-h", "300", "--offline-s", "1-2", "--fault-rate-per-h", "300",
            "--fault-s", "0.5-1")
        assert code == 0, err
        result = json.loads(out)
    # Leaving the block stops the central system, which flushes its bus: the rows read below are stored
    # (no fixed sleep that a busy machine could outlast).
    assert result["errors"] == {"total": 0, "by_kind": {}}, result
    assert result["versions"] == {"1.6": 3, "2.0.1": 3}
    assert result["processes"] == 2
    assert result["charger_events"]["boots_accepted"] == 6
    assert result["charger_events"]["offline_periods"] > 0
    assert result["connected"]["peak"] >= 1
    assert result["sessions"]["started"] > 0
    assert result["messages"]["by_action"]["StartTransaction"] > 0
    assert result["messages"]["by_action"]["TransactionEvent"] > 0
    conn = await asyncpg.connect(db_url)
    try:
        ids = [f"SMK-{i:05d}" for i in range(6)]
        locations = await conn.fetch("SELECT l.time_zone, l.latitude, l.is_public FROM locations l "
                                     "JOIN charge_points c ON c.location_id = l.id WHERE c.id = ANY($1)", ids)
        assert locations
        assert all(r["time_zone"] == "Asia/Kolkata" and r["is_public"] for r in locations)
        boots = await conn.fetchval("SELECT count(DISTINCT charge_point_id) FROM connection_events "
                                    "WHERE event = 'boot' AND charge_point_id = ANY($1)", ids)
        assert boots == 6
        sessions = await conn.fetch("SELECT charge_point_id, meter_start_wh, meter_stop_wh FROM transactions "
                                    "WHERE charge_point_id = ANY($1)", ids)
        assert len({r["charge_point_id"] for r in sessions}) > 1
        assert all(r["meter_stop_wh"] >= r["meter_start_wh"] for r in sessions if r["meter_stop_wh"] is not None)
        samples = await conn.fetchrow("SELECT count(*) AS n, count(*) FILTER (WHERE quality_flags <> 0) AS flagged "
                                      "FROM meter_samples WHERE charge_point_id = ANY($1)", ids)
        assert samples is not None
        assert samples["n"] > 0
        assert samples["flagged"] == 0
        assert await conn.fetchval("SELECT count(*) FROM connector_status WHERE charge_point_id = ANY($1)", ids) > 0
    finally:
        await conn.close()
