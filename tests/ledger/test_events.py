"""Event schemas, validation (fail closed), canonical bytes and personal-data marks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from incisive_lab.errors import IncisiveLabError
from incisive_lab.ledger import Event, EventError, Outcome, event_kinds, event_schema, format_time

from .helpers import make_event

REQUIRED_KINDS = {"access", "query", "ingest", "deidentify", "reidentify", "consent", "grant",
                  "request", "airlock", "fl-run", "login", "spawn"}


def _base(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": "access", "actor": "user:a@idp", "action": "view",
                         "resource": "dataset:x", "purpose": "research:p",
                         "outcome": {"decision": "allowed", "reason": "grant g"},
                         "time": "2025-01-01T00:00:00Z"}
    d.update(kw)
    return d


def test_required_kinds_are_registered_with_versions_and_personal_marks() -> None:
    assert set(event_kinds()) >= REQUIRED_KINDS
    for kind in event_kinds():
        schema = event_schema(kind)
        assert schema.version >= 1 and schema.actions
        assert "actor" in schema.personal_fields  # accounts are personal data everywhere
    assert "details.patient" in event_schema("access").personal_fields
    assert "resource" in event_schema("consent").personal_fields
    assert "details.address" in event_schema("login").personal_fields
    assert "resource" not in event_schema("access").personal_fields


def test_every_kind_accepts_a_minimal_event_of_each_action() -> None:
    for kind in event_kinds():
        schema = event_schema(kind)
        for action in schema.actions:
            ev = Event(kind=kind, actor="svc:test", action=action, resource="r:1",
                       purpose="p", outcome=Outcome.allow())
            assert Event.from_bytes(ev.to_bytes()) == ev


def test_canonical_bytes_are_stable_and_sorted() -> None:
    ev = Event.from_dict(_base(details={"instances": 3, "dataset": "x"}))
    assert ev.to_bytes() == (
        b'{"action":"view","actor":"user:a@idp","details":{"dataset":"x","instances":3},'
        b'"kind":"access","outcome":{"decision":"allowed","reason":"grant g"},'
        b'"purpose":"research:p","resource":"dataset:x","time":"2025-01-01T00:00:00.000000Z",'
        b'"v":1}')
    assert Event.from_bytes(ev.to_bytes()) == ev
    assert ev.to_dict()["v"] == 1


def test_unicode_is_kept_not_escaped() -> None:
    ev = Event.from_dict(_base(actor="user:zoë@idp", details={"modality": "CT — thorax"}))
    assert "zoë".encode() in ev.to_bytes()
    assert Event.from_bytes(ev.to_bytes()).actor == "user:zoë@idp"


@pytest.mark.parametrize("change, message", [
    ({"kind": "teleport"}, "unknown event kind"),
    ({"color": "red"}, "unknown event field"),
    ({"details": {"colour": "red"}}, "unknown detail"),
    ({"action": "delete"}, "is not an action"),
    ({"resource": None}, "need a non-empty resource"),
    ({"purpose": ""}, "need a non-empty purpose"),
    ({"outcome": {"decision": "maybe"}}, "outcome decision"),
    ({"outcome": {"decision": "denied"}}, "must say why"),
    ({"outcome": {"decision": "allowed", "why": "x"}}, "unknown outcome field"),
    ({"details": {"instances": 1.5}}, "must be an integer"),
    ({"details": {"instances": True}}, "must be an integer"),
    ({"details": {"instances": 2**60}}, "out of range"),
    ({"details": {"format": "png"}}, "must be one of"),
    ({"time": "yesterday"}, "not RFC 3339"),
    ({"time": "2025-01-01T00:00:00"}, "not RFC 3339"),
    ({"time": "2025-02-30T00:00:00Z"}, "not a valid date"),
    ({"v": 99}, "no schema version"),
    ({"actor": "user:a\nb"}, "control characters"),
    ({"actor": "x" * 2000}, "longer than"),
])
def test_invalid_events_fail_closed(change: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match=message) as info:
        Event.from_dict(_base(**change))
    assert isinstance(info.value, IncisiveLabError)


def test_detail_types() -> None:
    ev = Event(kind="query", actor="u", action="count", purpose="p", outcome=Outcome.allow(),
               details={"datasets": ["a", "b"], "suppressed": True,
                        "query_sha256": "ab" * 32, "results": 0})
    assert ev.details["datasets"] == ["a", "b"]
    with pytest.raises(EventError, match="64 lowercase hex"):
        Event(kind="query", actor="u", action="count", purpose="p", outcome=Outcome.allow(),
              details={"query_sha256": "AB" * 32})
    with pytest.raises(EventError, match="list of strings"):
        Event(kind="query", actor="u", action="count", purpose="p", outcome=Outcome.allow(),
              details={"datasets": "a"})
    grant = Event(kind="grant", actor="u", action="grant", resource="dataset:x",
                  outcome=Outcome.allow(), details={"expires": "2026-01-01T01:00:00+01:00"})
    assert grant.details["expires"] == "2026-01-01T00:00:00.000000Z"
    # None details are dropped, so they do not change the bytes
    assert make_event(1, details={"instances": None}).to_bytes() == make_event(1, details={
    }).to_bytes()


def test_time_normalisation() -> None:
    assert format_time("2025-03-01T10:00:00.123456789+01:00") == "2025-03-01T09:00:00.123456Z"
    cet = timezone(timedelta(hours=2))
    assert format_time(datetime(2025, 6, 1, 12, tzinfo=cet)) == "2025-06-01T10:00:00.000000Z"
    with pytest.raises(EventError, match="no time zone"):
        format_time(datetime(2025, 6, 1, 12))
    old = make_event(1, time="0999-12-31T23:00:00-02:00")  # years are always 4 digits
    assert old.time == "1000-01-01T01:00:00.000000Z"
    assert format_time("0099-01-01T00:00:00Z") == "0099-01-01T00:00:00.000000Z"
    assert Event.from_bytes(make_event(2, time="0099-01-01T00:00:00Z").to_bytes()).time[:4] == "0099"
    now = make_event(1, time=None).timestamp
    assert abs((datetime.now(UTC) - now).total_seconds()) < 3600  # defaults to now, in UTC


def test_from_bytes_refuses_non_canonical_forms() -> None:
    good = make_event(3, actor="user:zoë@idp").to_bytes()
    obj = json.loads(good)
    for bad in [
        json.dumps(obj).encode(),                                   # white space
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(),  # \u escapes
        good.replace(b'"v":1}', b'"v":1.0}'),                       # a float
        good.replace(b'{"action"', b'{"kind":"access","action"'),   # duplicate key
        good[:-1],                                                   # truncated
        b"\xff" + good,                                              # not UTF-8
        json.dumps({k: v for k, v in obj.items() if k != "purpose"}).encode(),  # key missing
    ]:
        if bad == good:
            continue
        with pytest.raises(EventError):
            Event.from_bytes(bad)


def test_redaction_uses_the_personal_marks() -> None:
    ev = make_event(4)
    red = ev.to_dict(redact=True)
    assert red["actor"] == "[personal]"
    assert red["details"]["patient"] == "[personal]"
    assert red["details"]["instances"] == ev.details["instances"]
    assert red["resource"] == ev.resource
    assert ev.to_dict()["actor"] == ev.actor


def test_events_are_immutable() -> None:
    ev = make_event(5)
    with pytest.raises(AttributeError):
        ev.actor = "someone else"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ev.details["instances"] = 99  # type: ignore[index]


def _encoder_bytes(event: Event) -> bytes:
    """What the general JSON encoder makes of an event (the definition of canonical)."""
    from incisive_lab.ledger._events import _ENCODER

    return _ENCODER.encode(event.to_dict()).encode("utf-8")


class _Str(str):
    """A str subclass: events built from one take the general encoder's path."""


def test_canonical_bytes_are_the_json_encoders_bytes() -> None:
    """The direct builder of canonical text writes exactly what the JSON encoder writes."""
    from . import make_golden

    awkward = ['"quoted" \\ back\\slash', "tab\tnew\nline\r\x08\x0c", "\x7f del, é, 拒否, 🙂",
               "\u2028\u2029 separators", "</script>", ""]
    events = list(make_golden.golden_events())
    for i, text in enumerate(awkward):
        events.append(Event(kind="access", actor=f"user:a{i}@idp", action="view",
                            resource="dataset:x/" + text.replace("\n", " ").replace("\t", " ")
                            .replace("\r", " ").replace("\x08", " ").replace("\x0c", " ")
                            .replace("\x7f", " "),
                            purpose="research:p", outcome=Outcome.deny(text or "no"),
                            details={"via": text, "instances": -(2**53 - 1) + i,
                                     "grant": None}, time="0999-01-01T00:00:00Z"))
        events.append(Event(kind="login", actor="user:b@idp", action="login",
                            outcome=Outcome.allow(text),
                            details={"amr": [text, "pwd", text], "address": text}))
    events.append(make_event(3, details={}))
    events.append(Event(kind="access", actor=_Str("user:c@idp"), action="view",
                        resource="dataset:x", purpose="research:p", outcome=Outcome.allow()))
    for event in events:
        assert event.to_bytes() == _encoder_bytes(event), event
        assert Event.from_bytes(event.to_bytes()) == event
