"""A three-node federation for the broker tests, built once per session.

18 synthetic patients over three sites (6 each; seed 11), each site ingested by the real
ingest into its own node (``node-a`` GR federated, ``node-b`` IT federated, ``node-c`` ES
central), served by real node services with one audience (the federation's) and the real
identity provider. A steward sets the sharing terms over HTTP:

=========  ==========  ===================================  ===================  =====
dataset    visibility  purposes                             organisations        floor
=========  ==========  ===================================  ===================  =====
site-a     visible     ai-development, cancer-research      ``*``                3
site-b     train-only  ai-development                       ``*``                4
site-c     visible     cancer-research                      hospital-c.example   3
=========  ==========  ===================================  ===================  =====

Besides the default users, two more researchers (``sweeper``, ``requester``) keep the
nodes' differencing guard, which remembers each user's answers, from linking one test's
queries to another's. The test users carry no organisation claim, so site-c never counts for them (denied at
the node: that is part of what the tests see).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.federation.config import parse_config
from incisive_lab.federation.service import BrokerSettings
from incisive_lab.node.service import ServiceSettings
from tests._support.idp import DEFAULT_USERS, Idp, start_idp
from tests._support.node_server import serve_node

AUDIENCE = "https://federation.incisive.test/"
SITES = {"a": ("GR", "federated"), "b": ("IT", "federated"), "c": ("ES", "central")}
BASE_TERMS: dict[str, Any] = {"roles": ["researcher", "annotator"], "min_loa": "substantial", "expires": None}
#: Researchers of their own (see the module doc).
EXTRA_USERS = tuple({"username": name, "name": name.title(), "email": f"{name}@incisive.test",
                     "roles": ["researcher"], "groups": ["/incisive/researcher"], "loa": "substantial"}
                    for name in ("sweeper", "requester"))
TERMS: dict[str, dict[str, Any]] = {
    "site-a": {"hosting": "federated", "visibility": "visible", "organisations": ["*"],
               "purposes": ["ai-development", "cancer-research"], "floor": 3},
    "site-b": {"hosting": "federated", "visibility": "train-only", "organisations": ["*"],
               "purposes": ["ai-development"], "floor": 4},
    "site-c": {"hosting": "central", "visibility": "visible", "organisations": ["hospital-c.example"],
               "purposes": ["cancer-research"], "floor": 3},
}


@dataclass
class Federation:
    """Three running nodes, their directories and records, the IdP."""

    idp: Idp
    urls: dict[str, str]          #: node name -> base URL
    dirs: dict[str, Path]         #: node name -> node directory
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  #: "node/dataset" -> record file
    root: Path = Path()
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.idp.token(user)
        return self._tokens[user]

    def h(self, user: str, purpose: str = "ai-development") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}", "X-Purpose": purpose}

    def config(self, urls: dict[str, str] | None = None, **top: Any) -> Any:
        countries = {f"node-{s}": c for s, (c, _) in SITES.items()}
        nodes = [{"name": name, "url": url, **({"country": countries[name]} if name in countries else {})}
                 for name, url in (urls or self.urls).items()]
        return parse_config({"nodes": nodes, **top})

    def settings(self, state: Path, urls: dict[str, str] | None = None, **top: Any) -> BrokerSettings:
        return BrokerSettings(config=self.config(urls, **top), issuer=self.idp.issuer, audience=AUDIENCE,
                              state_dir=state)


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    from incisive_lab.deid import write_secret_file
    from incisive_lab.dicom.synth import generate
    from incisive_lab.node.ingest import ingest

    root = tmp_path_factory.mktemp("federation")
    generate(root / "raw", patients=18, seed=11, sites=tuple(SITES), progress=False)
    dirs = {}
    for site, (country, hosting) in SITES.items():
        key = write_secret_file(root / "keys" / f"{site}.key") if hosting == "federated" else None
        ingest(root / f"node-{site}", dataset=f"site-{site}", dicom=root / "raw" / site / "dicom",
               clinical=root / "raw" / site / "clinical.xlsx", hosting=hosting, secret_file=key,
               country=country, progress=False,
               description=f"Synthetic imaging of site {site} ({hosting} hosting).")
        dirs[f"node-{site}"] = root / f"node-{site}"
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(start_idp(root / "idp", audience=AUDIENCE, access_token_ttl=3600,
                                             users=(*DEFAULT_USERS, *EXTRA_USERS)))
        urls = {name: stack.enter_context(serve_node(ServiceSettings(node_dir=d, issuer=idp.issuer,
                                                                     audience=AUDIENCE)))
                for name, d in dirs.items()}
        fed = Federation(idp, urls, dirs, root=root)
        for name, d in dirs.items():
            site = name.removeprefix("node-")
            dataset = f"site-{site}"
            r = httpx.put(f"{urls[name]}/governance/terms/{dataset}", headers=fed.h("steward"),
                          json={**BASE_TERMS, **TERMS[dataset]}, timeout=30)
            assert r.status_code == 200, r.text
            fed.records[f"{name}/{dataset}"] = json.loads((d / "datasets" / f"{dataset}.json").read_text())
        yield fed
