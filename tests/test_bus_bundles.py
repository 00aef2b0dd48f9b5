"""Bundles: consecutive outbox records as one MQTT message (pure logic, no broker)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from csms.bus.mqtt import BUNDLE_MAX_BYTES, bundles
from csms.bus.outbox import OutboxRecord
from schemas.events import ConnectionEvent, EventBatch, decode_message, encode_batch, encode_bundle

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _batch(first_seq: int, n: int) -> EventBatch:
    return EventBatch(schema_version=1, node_id="n1", first_seq=first_seq, oldest_received_at=T0,
                      events=[ConnectionEvent(charge_point_id=f"CP{first_seq + i:04d}", received_at=T0, time=T0,
                                              event="connected", node_id="n1") for i in range(n)])


def _record(first_seq: int, n: int) -> OutboxRecord:
    return OutboxRecord(first_seq, first_seq + n - 1, encode_batch(_batch(first_seq, n)), T0)


def test_a_bundle_decodes_to_its_batches_in_order() -> None:
    batches = [_batch(0, 2), _batch(2, 1), _batch(3, 5)]
    message = encode_bundle([encode_batch(b) for b in batches])
    assert decode_message(message) == batches


def test_a_single_batch_is_still_a_message() -> None:
    batch = _batch(7, 3)
    assert decode_message(encode_batch(batch)) == [batch]


@pytest.mark.parametrize("payload", [b"", b"\x91\x01", b"\x92" + encode_batch(_batch(0, 1)), b"\xc1"])
def test_a_malformed_message_is_refused_whole(payload: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_message(payload)


def test_consecutive_records_share_a_bundle_and_gaps_split_it() -> None:
    records = [_record(0, 2), _record(2, 3), _record(5, 1), _record(9, 2), _record(11, 1)]  # 6..8 confirmed
    groups = bundles(records)
    assert [[(r.first_seq, r.last_seq) for r in g] for g in groups] == [[(0, 1), (2, 4), (5, 5)], [(9, 10), (11, 11)]]
    decoded = decode_message(encode_bundle([r.payload for r in groups[0]]))
    assert [(b.first_seq, len(b.events)) for b in decoded] == [(0, 2), (2, 3), (5, 1)]


def test_a_bundle_stays_under_its_byte_bound() -> None:
    records = [_record(i * 4, 4) for i in range(10)]
    size = len(records[0].payload)
    groups = bundles(records, max_bytes=3 * size)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert all(sum(len(r.payload) for r in g) <= 3 * size for g in groups)
    # A record bigger than the bound goes alone rather than not at all.
    assert [len(g) for g in bundles(records, max_bytes=1)] == [1] * 10
    assert BUNDLE_MAX_BYTES <= 2**20  # below EMQX's default max_packet_size


def test_nothing_pending_is_no_bundle() -> None:
    assert bundles([]) == []
