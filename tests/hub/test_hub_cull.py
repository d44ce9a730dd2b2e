"""Idle culling: jupyterhub-idle-culler runs as a hub service and stops an idle server;
the cull and the stop are ledgered."""

from __future__ import annotations

import time
from pathlib import Path

from ._hub import HubClient, hub_login, start_hub, start_hub_idp, start_server

AUDIENCE = "https://federation.incisive.test/"


def test_an_idle_server_is_culled_and_the_cull_ledgered(tmp_path: Path) -> None:
    client = HubClient.new()
    with start_hub_idp(tmp_path / "idp", client=client, audience=AUDIENCE) as idp, \
            start_hub(tmp_path / "hub", idp, {"broker": "http://127.0.0.1:9/", "nodes": {}},
                      client=client, settings={"idle_timeout": 5, "cull_every": 1}) as hub:
        http, _ = hub_login(hub.url, "annotator")
        start_server(hub, http, "annotator")
        deadline = time.monotonic() + 60
        while http.get(hub.api_url + "/user").json().get("servers"):
            assert time.monotonic() < deadline, "the idle server was not culled"
            time.sleep(0.2)
        spawn = [e for e in hub.ledger_events() if e.kind == "spawn"]
        # the culler's request is ledgered when it is answered, after or before the stop
        assert spawn[0].action == "spawn"
        assert sorted((e.action, e.actor) for e in spawn[1:]) == [
            ("cull", "service:idle-culler"), ("stop", "hub")]
        assert all(e.resource == "hub-user:annotator/server:default" for e in spawn)
        assert "idle-culler" in hub.log()
