"""Without servers: the strict node list, and the broker's checks on what nodes answer
(a ``LyingNode`` behind ``httpx.MockTransport`` sends counts below the floor)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.federation import Broker, ConfigError, check_item, load_config, parse_config


def _nodes(**extra: Any) -> dict[str, Any]:
    return {"nodes": [{"name": "a", "url": "http://127.0.0.1:9001"}], **extra}


@pytest.mark.parametrize(("doc", "field"), [
    ({"nodes": [{"name": "a", "urll": "http://127.0.0.1:1"}]}, "nodes[0].urll"),
    (_nodes(timeoutt=3), "timeoutt"),
    ({"nodes": []}, "nodes"),
    ({"nodes": [{"name": "A b", "url": "http://127.0.0.1:1"}]}, "nodes[0].name"),
    ({"nodes": [{"name": "a"}]}, "nodes[0].url"),
    ({"nodes": [{"name": "a", "url": "http://node-a.example.org"}]}, "https"),
    ({"nodes": [{"name": "a", "url": "ftp://127.0.0.1"}]}, "nodes[0].url"),
    ({"nodes": [{"name": "a", "url": "http://127.0.0.1:1", "timeout": 0}]}, "nodes[0].timeout"),
    ({"nodes": [{"name": "a", "url": "http://127.0.0.1:1", "country": "Greece"}]}, "nodes[0].country"),
    ({"nodes": [{"name": "a", "url": "http://127.0.0.1:1"}, {"name": "a", "url": "http://127.0.0.1:2"}]},
     "nodes[1].name"),
    (_nodes(floor=2), "floor"),
    (_nodes(catalogue_ttl=-1), "catalogue_ttl"),
])
def test_a_bad_config_names_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_toml_and_json_files_and_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "nodes.toml"
    toml.write_text('timeout = 2.5\nfloor = 11\n[[nodes]]\nname = "a"\nurl = "https://a.example/"\n'
                    'country = "gr"\n[[nodes]]\nname = "b"\nurl = "https://b.example"\ntimeout = 4\n')
    cfg = load_config(toml)
    assert [(n.name, n.url, n.timeout, n.country) for n in cfg.nodes] == [
        ("a", "https://a.example", 2.5, "GR"), ("b", "https://b.example", 4.0, None)]
    assert cfg.floor == 11
    over = cfg.with_overrides(timeout=1.0, floor=20)
    assert {n.timeout for n in over.nodes} == {1.0} and over.floor == 20
    with pytest.raises(ConfigError, match="--floor"):
        cfg.with_overrides(floor=1)
    js = tmp_path / "nodes.json"
    js.write_text(json.dumps(_nodes()))
    assert load_config(js).nodes[0].name == "a"
    js.write_text("{nodes: 1")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(js)


def test_check_item_never_relays_a_number_below_a_floor() -> None:
    ok = {"dataset": "x", "count": 12, "suppressed": False, "floor": 10, "rounding": 1}
    assert check_item(ok, required=10, members_allowed=False) == (ok, [])
    for bad in ({**ok, "count": 9}, {**ok, "count": 2, "floor": 1}, {**ok, "suppressed": True},
                {**ok, "count": "12"}, {**ok, "count": None}, {**ok, "count": True},
                {**ok, "count": "<10", "suppressed": False}):
        item, problems = check_item(bad, required=10, members_allowed=True)
        assert problems and item["suppressed"] and item["count"] == f"<{item['floor']}" and item["floor"] >= 10
        assert item["broker_suppressed"] is True
    raised, problems = check_item(ok, required=15, members_allowed=False)
    assert raised["count"] == "<15" and problems
    listed = {**ok, "members": [{"study_uid": "1.2"}]}
    assert "members" in check_item(listed, required=10, members_allowed=True)[0]
    kept, problems = check_item(listed, required=10, members_allowed=False)
    assert "members" not in kept and problems
    hidden = {**listed, "count": "<10", "suppressed": True}
    kept, problems = check_item(hidden, required=10, members_allowed=True)
    assert "members" not in kept and problems


def _lying_node(request: httpx.Request) -> httpx.Response:
    """A node that relays numbers below its own floor and members without any grant."""
    if request.url.path == "/governance/grants":
        return httpx.Response(200, json=[])
    body = json.loads(request.content)
    assert body["broker_floor"] == 10  # the configured floor travels to the node
    return httpx.Response(200, json={"format": "incisive-cohort-answer/1", "query_id": 1, "denied": {}, "datasets": [
        {"dataset": "low", "count": 4, "suppressed": False, "floor": 3, "rounding": 1},
        {"dataset": "members", "count": 40, "suppressed": False, "floor": 10, "rounding": 1,
         "members": [{"study_uid": "1.2.3"}]},
        {"dataset": "fine", "count": 25, "suppressed": False, "floor": 10, "rounding": 1},
        "garbage"]})


def test_a_lying_node_is_caught_by_the_broker() -> None:
    config = parse_config({"floor": 10, "nodes": [{"name": "liar", "url": "http://127.0.0.1:9"}]})

    async def run() -> dict[str, Any]:
        broker = Broker(config, transport=httpx.MockTransport(_lying_node))
        try:
            return await broker.count({"criteria": {}, "members": True, "broker_floor": 5},
                                      authorization="Bearer x", purpose="ai-development")
        finally:
            await broker.aclose()

    answer = asyncio.run(run())
    by_name = {d["dataset"]: d for d in answer["datasets"]}
    assert answer["broker_floor"] == 10  # the caller's lower floor did not lower the configured one
    assert by_name["low"]["count"] == "<10" and by_name["low"]["broker_suppressed"] is True
    assert "members" not in by_name["members"] and by_name["members"]["count"] == 40
    assert by_name["fine"]["count"] == 25
    (node,) = answer["nodes"]
    assert node["status"] == "ok" and len(node["violations"]) == 3
