"""The pure parts of commands across nodes: the at-most-once memory, the outcome mapping, the wire format."""

from __future__ import annotations

import msgspec
import pytest

from csms.common.errors import (
    ChargerBusyError,
    ChargerCommandError,
    ChargerNotReadingError,
    ChargerOfflineError,
    ChargerTimeoutError,
)
from csms.gateway.fleet import lease_renew_interval_s
from csms.gateway.node_messages import (
    CloseRequest,
    CommandReply,
    CommandRequest,
    DedupeCache,
    RemoteNodeError,
    Seen,
    decode,
    encode,
    failure_reply,
    raise_for,
)
from csms.gateway.outgoing import ChargerCallError
from csms.ocpp.commands import CommandRefused
from schemas.settings import Settings, SettingsError
from schemas.topics import is_node_replies_topic, node_commands_topic, node_replies_topic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_command_id_is_admitted_once_and_a_duplicate_never_again() -> None:
    clock = Clock()
    cache = DedupeCache(ttl_s=60, max_entries=10, clock=clock)
    assert cache.admit("c1", deadline=clock.now + 35).seen is Seen.NEW
    assert cache.admit("c1", deadline=clock.now + 35).seen is Seen.IN_FLIGHT  # redelivered while being sent
    cache.complete("c1", b"reply-1")
    again = cache.admit("c1", deadline=clock.now + 35)
    assert (again.seen, again.reply) == (Seen.DONE, b"reply-1")            # the same reply, not a second send
    clock.now += 59
    assert cache.admit("c1", deadline=clock.now).seen is Seen.DONE
    clock.now += 2                                                          # past the ttl: forgotten
    assert cache.admit("c1", deadline=clock.now - 1).seen is Seen.NEW
    assert len(cache) == 1


def test_a_full_cache_refuses_rather_than_forget_a_command_within_its_deadline() -> None:
    clock = Clock()
    cache = DedupeCache(ttl_s=600, max_entries=2, clock=clock)
    assert cache.admit("a", deadline=clock.now + 30).seen is Seen.NEW
    assert cache.admit("b", deadline=clock.now + 30).seen is Seen.NEW
    assert cache.admit("c", deadline=clock.now + 30).seen is Seen.FULL     # two in flight
    cache.complete("a", b"ra")
    assert cache.admit("c", deadline=clock.now + 30).seen is Seen.FULL     # "a" may still be redelivered
    clock.now += 31                                                          # "a" is past its deadline
    assert cache.admit("c", deadline=clock.now + 30).seen is Seen.NEW      # "a" forgotten early
    assert cache.admit("a", deadline=clock.now - 1).seen is Seen.FULL      # "b", "c" in flight
    cache.complete("b", b"rb")
    assert cache.admit("b", deadline=clock.now).reply == b"rb"
    cache.complete("unknown", b"x")                                          # a completion of nothing is ignored
    assert len(cache) == 2


@pytest.mark.parametrize(("exc", "outcome"), [
    (CommandRefused("not in this state"), "refused"),
    (ChargerCallError("NotSupported", "no", {"k": "v"}), "callerror"),
    (ChargerNotReadingError("stuck"), "not_reading"),
    (ChargerTimeoutError("late"), "timeout"),
    (ChargerBusyError("16 waiting"), "busy"),
    (ChargerOfflineError("gone"), "offline"),
    (ChargerCommandError("other"), "undeliverable"),
    (RuntimeError("bug"), "failed"),
])
def test_every_failure_comes_back_as_the_exception_a_local_command_raises(exc: Exception, outcome: str) -> None:
    reply = decode(encode(failure_reply("id-1", exc, node_id="n1")))
    assert isinstance(reply, CommandReply)
    assert reply.outcome == outcome
    expected = type(exc) if outcome not in ("failed",) else RemoteNodeError
    with pytest.raises(expected) as raised:
        raise_for(reply)
    assert type(raised.value) is expected
    if isinstance(exc, ChargerCallError):
        assert isinstance(raised.value, ChargerCallError)
        assert (raised.value.code, raised.value.description, raised.value.details) == ("NotSupported", "no",
                                                                                        {"k": "v"})
    if outcome == "failed":
        assert "bug" not in str(raised.value)   # an internal error's text stays on its node


def test_expired_is_a_timeout_and_ok_is_the_answer() -> None:
    with pytest.raises(ChargerTimeoutError):
        raise_for(CommandReply("x", "expired", description="after its deadline"))
    assert raise_for(CommandReply("x", "ok", response={"status": "Accepted"})) == {"status": "Accepted"}


def test_wire_format_round_trips_and_rejects_anything_else() -> None:
    request = CommandRequest(command_id="c", charge_point_id="CP", connection_epoch=7, action="Reset",
                             payload={"type": "Soft", "n": [1, 2.5, None]}, reply_to=node_replies_topic("a"),
                             deadline=1.5e9, timeout_s=35.0, origin="a")
    assert decode(encode(request)) == request
    assert decode(encode(CloseRequest("CP", 8))) == CloseRequest("CP", 8)
    for junk in (b"", b"\x81\xa1t\xa3bad", msgspec.msgpack.encode({"t": "cmd"}), b"not msgpack \xff"):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode(junk)


def test_topics_and_reply_to_validation() -> None:
    assert node_commands_topic("n-1") == "csms/v1/nodes/n-1/commands"
    assert is_node_replies_topic(node_replies_topic("n-1-w2"))
    for bad in ("csms/v1/nodes/+/replies", "csms/v1/nodes/#", "csms/v1/nodes//replies", "csms/v1/events/a",
                "csms/v1/nodes/a/b/replies", "other/csms/v1/nodes/a/replies"):
        assert not is_node_replies_topic(bad), bad


def test_lease_settings() -> None:
    assert lease_renew_interval_s(15.0, None) == 5.0
    assert lease_renew_interval_s(15.0, 2.0) == 2.0
    for bad in ({"lease_s": 0}, {"lease_s": 5, "lease_renew_s": 5}, {"lease_renew_s": 0},
                {"command_dedupe_ttl_s": 35}, {"command_dedupe_max_entries": 0}, {"command_forward_margin_s": -1}):
        with pytest.raises(SettingsError):
            Settings(**bad)  # type: ignore[arg-type]
