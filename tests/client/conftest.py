"""A small real federation behind a real gateway, built once per test session.

8 synthetic patients over two sites (seed 7), each ingested by the real ingest into its own
federated node, served by real node services; the real identity provider; a real broker
that also lists a third node where nothing listens (so federated answers are partial);
and the gateway on a Unix socket, acting for ``researcher`` with tokens from the IdP. A
steward sets the terms over HTTP and the researcher holds a grant on both datasets for
``ai-development`` (asked for and approved through the nodes' API):

============  ===========  ==========  =================================  =====
node          dataset      visibility  purposes                           floor
============  ===========  ==========  =================================  =====
hospital-a    site-a       visible     ai-development, cancer-research    3
hospital-b    site-b       train-only  ai-development                     10
hospital-x    (none)       —           nothing listens there              —
============  ===========  ==========  =================================  =====

The gateway's destinations are the broker, ``hospital-a`` and ``hospital-b`` (not
``hospital-x``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.client import Workbench
from incisive_lab.federation.config import parse_config as parse_broker_config
from incisive_lab.federation.service import BrokerSettings
from incisive_lab.ledger import Ledger
from incisive_lab.node.service import ServiceSettings
from incisive_lab_server._gateway_routes import parse_config
from incisive_lab_server.gateway import Gateway
from tests._support.idp import Idp, start_idp
from tests._support.node_server import serve_node
from tests.broker.doubles import dead_url, serve_broker
from tests.client.support import CachedTokens, GatewayThread, short_dir

AUDIENCE = "https://federation.workbench.test/"
PURPOSE = "ai-development"
SITES = {"hospital-a": ("a", "GR"), "hospital-b": ("b", "IT")}
BASE_TERMS: dict[str, Any] = {"hosting": "federated", "organisations": ["*"], "roles": ["researcher", "annotator"],
                              "min_loa": "substantial", "expires": None}
TERMS: dict[str, dict[str, Any]] = {
    "site-a": {"visibility": "visible", "purposes": ["ai-development", "cancer-research"], "floor": 3},
    "site-b": {"visibility": "train-only", "purposes": ["ai-development"], "floor": 10},
}


@dataclass
class Lab:
    """The running federation and the gateway (see the module doc)."""

    idp: Idp
    tokens: CachedTokens
    node_urls: dict[str, str]      #: node name -> base URL
    node_dirs: dict[str, Path]     #: node name -> node directory
    broker_url: str
    gateway: GatewayThread
    ledger_dir: Path               #: the gateway's ledger

    @property
    def socket(self) -> str:
        return self.gateway.socket_path

    def workbench(self, **kw: Any) -> Workbench:
        return Workbench(self.socket, progress=False, **kw)

    def headers(self, user: str, purpose: str = PURPOSE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens(user)}", "X-Purpose": purpose}

    def node_events(self, node: str, since: int = 0) -> list[Any]:
        with Ledger.open(self.node_dirs[node], read_only=True) as ledger:
            return [e.event for e in ledger.entries(since)]

    def node_ledger_size(self, node: str) -> int:
        with Ledger.open(self.node_dirs[node], read_only=True) as ledger:
            return ledger.size

    def subject(self, user: str) -> str:
        """The ``sub`` claim of ``user``'s tokens (what nodes write as the actor)."""
        import jwt

        return str(jwt.decode(self.tokens(user), options={"verify_signature": False})["sub"])


def _call(method: str, url: str, headers: dict[str, str], **kw: Any) -> Any:
    r = httpx.request(method, url, headers=headers, timeout=30, **kw)
    assert r.status_code < 300, f"{method} {url}: {r.status_code} {r.text}"
    return r.json()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from incisive_lab.deid import write_secret_file
    from incisive_lab.dicom.synth import generate
    from incisive_lab.node.ingest import ingest

    root = tmp_path_factory.mktemp("workbench")
    generate(root / "raw", patients=8, seed=7, sites=tuple(s for s, _ in SITES.values()), progress=False)
    dirs: dict[str, Path] = {}
    for name, (site, country) in SITES.items():
        key = write_secret_file(root / "keys" / f"{site}.key")
        ingest(root / name, dataset=f"site-{site}", dicom=root / "raw" / site / "dicom",
               clinical=root / "raw" / site / "clinical.xlsx", hosting="federated", secret_file=key,
               country=country, progress=False, description=f"Synthetic imaging of site {site}.")
        dirs[name] = root / name
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(start_idp(root / "idp", audience=AUDIENCE, access_token_ttl=3600))
        tokens = CachedTokens(idp.token)
        urls = {name: stack.enter_context(serve_node(ServiceSettings(node_dir=d, issuer=idp.issuer,
                                                                     audience=AUDIENCE)))
                for name, d in dirs.items()}
        steward = {"Authorization": f"Bearer {tokens('steward')}"}
        researcher = {"Authorization": f"Bearer {tokens('researcher')}", "X-Purpose": PURPOSE}
        for name, (site, _) in SITES.items():
            dataset = f"site-{site}"
            _call("PUT", f"{urls[name]}/governance/terms/{dataset}", steward, json={**BASE_TERMS, **TERMS[dataset]})
            req = _call("POST", f"{urls[name]}/governance/requests", researcher,
                        json={"dataset": dataset, "purpose": PURPOSE, "project": "workbench tests"})
            _call("POST", f"{urls[name]}/governance/requests/{req['request_id']}/approve", steward,
                  json={"days": 30})
        broker_config = parse_broker_config({"timeout": 10, "nodes": [
            *({"name": n, "url": u} for n, u in urls.items()), {"name": "hospital-x", "url": dead_url()}]})
        broker_url = stack.enter_context(serve_broker(BrokerSettings(
            config=broker_config, issuer=idp.issuer, audience=AUDIENCE, state_dir=root / "broker")))
        run = stack.enter_context(short_dir())
        gateway = Gateway(parse_config({"broker": broker_url, "nodes": urls}), socket_path=str(run / "gateway.sock"),
                          token_source=tokens.source("researcher"), user="researcher",
                          ledger_dir=run / "gateway-ledger")
        thread = stack.enter_context(GatewayThread(gateway))
        yield Lab(idp, tokens, urls, dirs, broker_url, thread, run / "gateway-ledger")
