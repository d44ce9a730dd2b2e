"""Federations of real node stores for the federated-training tests (and the benchmark).

:func:`build_federation` generates a synthetic multi-site set
(:func:`incisive_lab.dicom.synth.generate`), ingests each site into its own node with the
real ingest (pseudonymised, federated hosting), and sets what a steward would (as the demo
does, :func:`incisive_lab._demo_stack._set_governance`): sharing terms for purpose
``ai-development``, roles researcher and annotator, and a grant to user ``researcher``
over every consenting patient of the site's dataset. Site ``b`` is ``train-only`` by
default: training may use it, nobody may view it.

It is idempotent on an existing root: a federation finished with the same parameters is
reused as it is (``federation.json`` marks it finished); an interrupted build is completed
(generation, ingest and governance are each idempotent). :func:`shared_federation` builds
one per parameter set under the pytest session's base temporary directory, so every test
module asking for the same parameters in one session gets the same federation.

Timing on the 2-core development machine: :data:`STANDARD` (144 patients) ~13 s to generate
and ~33 s to ingest per site; :data:`SMALL` (16 patients) ~15 s in all.

Example
-------
>>> fed = build_federation(tmp_path / "fed", **STANDARD)               # doctest: +SKIP
>>> with fed.readers() as readers:                                     # doctest: +SKIP
...     result = train_centralised(builtin("mg-lesion"), list(readers.values()), {}, rounds=8)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incisive_lab.governance.policy import Requester

#: The federation the task tests train on: big enough for the tasks to learn (36 breast and
#: 36 lung patients over three sites), small enough to build in about two minutes.
STANDARD: Mapping[str, Any] = {"patients": 144, "seed": 7}
#: A small one for the reader and governance tests (2 sites, 16 patients).
SMALL: Mapping[str, Any] = {"patients": 16, "seed": 3, "sites": ("a", "b")}

PURPOSE = "ai-development"
RESEARCHER = "researcher"
FORMAT = "incisive-fl-test-federation/1"


def dataset_of(site: str) -> str:
    """The dataset name of a site (``site-a``)."""
    return f"site-{site}"


def steward_of(site: str) -> str:
    """The steward acting at a site's node."""
    return f"steward@hospital-{site}.example"


def researcher() -> Requester:
    """The researcher of the grants (LoA substantial, organisation uni-a.example)."""
    from incisive_lab.access import LoA, Role

    return Requester(subject=RESEARCHER, roles=frozenset({Role.RESEARCHER}), loa=LoA.SUBSTANTIAL,
                     organisation="uni-a.example")


@dataclass
class Federation:
    """A built federation.

    Attributes
    ----------
    root : Path
        Where it lives (``raw/`` the synthetic set, ``node-<site>/`` the nodes, ``keys/``).
    nodes : dict of str to Path
        Site → node directory.
    datasets : dict of str to str
        Site → dataset name.
    visibility : dict of str to str
        Site → the terms' visibility.
    requester : Requester
        The researcher holding the grants.
    truth : dict of str to dict
        Site → the generator's ground truth (``raw/truth/<site>.json``): for assertions only,
        never for labels.
    purpose : str
        The purpose of the terms and grants.
    """

    root: Path
    nodes: dict[str, Path]
    datasets: dict[str, str]
    visibility: dict[str, str]
    requester: Requester
    truth: dict[str, dict[str, Any]] = field(repr=False)
    purpose: str = PURPOSE

    def node_config(self, site: str) -> dict[str, str]:
        """The node settings a ClientApp needs besides identity (``node-dir``, ``node-name``)."""
        return {"node-dir": str(self.nodes[site]), "node-name": f"hospital-{site}"}

    def train_scope(self, site: str) -> Any:
        """The researcher's ``train`` read scope at a site now (train-only datasets included,
        withdrawn patients excluded)."""
        from incisive_lab.governance.policy import Action
        from incisive_lab.governance.store import Governance
        from incisive_lab.ledger import Ledger
        from incisive_lab.node.store import NodeStore

        with NodeStore.open(self.nodes[site]) as store, Ledger.open(self.nodes[site]) as ledger:
            return Governance(store.engine, ledger).read_scope(self.requester, self.purpose,
                                                               action=Action.TRAIN)

    def withdraw(self, site: str, patient: str) -> None:
        """Record a patient's withdrawal at a site, as its steward."""
        from incisive_lab.governance.store import Governance
        from incisive_lab.ledger import Ledger
        from incisive_lab.node.store import NodeStore

        with NodeStore.open(self.nodes[site]) as store, Ledger.open(self.nodes[site]) as ledger:
            Governance(store.engine, ledger).withdraw_patient(dataset_of(site), patient,
                                                              steward=steward_of(site))

    @contextlib.contextmanager
    def readers(self, sites: tuple[str, ...] | None = None, *,
                on_read: Callable[[str, str, str], None] | None = None) -> Iterator[dict[str, Any]]:
        """Open a :class:`~incisive_lab.fl.data.CohortReader` per site over its train scope.

        ``on_read(site, dataset, patient)`` is called for every read. The stores are closed
        on exit.
        """
        from incisive_lab.fl.data import CohortReader
        from incisive_lab.node.store import NodeStore

        chosen = sites or tuple(self.nodes)
        with contextlib.ExitStack() as stack:
            out: dict[str, Any] = {}
            for site in chosen:
                scope = self.train_scope(site)
                store = stack.enter_context(NodeStore.open(self.nodes[site], durable=False))
                hook = (None if on_read is None
                        else (lambda d, p, _s=site: on_read(_s, d, p)))
                out[site] = CohortReader(store, scope, on_read=hook)
            yield out

    def truth_patients(self, site: str) -> dict[str, dict[str, Any]]:
        """The generator's patients of a site by their original PatientID (test use only)."""
        return {p["patient_id"]: p for p in self.truth[site]["patients"]}


def _set_governance(node_dir: Path, site: str, visibility: str) -> None:
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.store import NodeStore

    dataset = dataset_of(site)
    steward = steward_of(site)
    with NodeStore.open(node_dir) as store, Ledger.open(node_dir) as ledger:
        gov = Governance(store.engine, ledger)
        terms = {"hosting": "federated", "organisations": ["*"], "roles": ["researcher", "annotator"],
                 "purposes": [PURPOSE], "min_loa": "substantial", "floor": 3, "expires": None,
                 "visibility": visibility}
        current = gov.terms(dataset)
        if current is None or current.visibility.value != visibility:
            gov.set_terms(terms, actor=steward, dataset=dataset)
        if not gov.grants_for(RESEARCHER, dataset=dataset):
            request = gov.submit_request(researcher(), dataset, purpose=PURPOSE, project="fl-tests")
            gov.approve(request.request_id, steward=steward, members=gov.dataset_patients(dataset),
                        days=365)


def _write_test_key(path: Path, seed: int) -> None:
    """The provider's pseudonymisation key, derived from the seed: a test federation's
    pseudonyms — hence its train/test split — are the same every time it is built. (A real
    provider's key is random: ``incisive-lab keygen``.)"""
    import hashlib
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (hashlib.sha256(f"{FORMAT}/key/{seed}".encode()).hexdigest() + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def build_federation(root: Path, *, patients: int, seed: int, sites: tuple[str, ...] = ("a", "b", "c"),
                     visibility: Mapping[str, str] | None = None) -> Federation:
    """Generate, ingest and govern one node per site under ``root`` (see the module doc).

    Parameters
    ----------
    root
        The federation's folder (created; reused when it holds one with the same parameters).
    patients, seed, sites
        The synthetic set's parameters.
    visibility
        Site → ``visible`` or ``train-only`` (default: ``b`` train-only, others visible).

    Raises
    ------
    ValueError
        ``root`` holds a federation built with other parameters.
    """
    from incisive_lab.dicom.synth import generate
    from incisive_lab.node.ingest import ingest

    vis = {s: "visible" for s in sites}
    vis.update({"b": "train-only"} if "b" in sites and visibility is None else {})
    if visibility is not None:
        unknown = set(visibility) - set(sites)
        if unknown:
            raise ValueError(f"visibility: sites {sorted(unknown)} are not in sites {sites}")
        vis.update(visibility)
    params = {"format": FORMAT, "patients": patients, "seed": seed, "sites": list(sites),
              "visibility": vis}
    root = Path(root)
    marker = root / "federation.json"
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != params:
            raise ValueError(f"root: {root} holds a federation built with {found}, not {params}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        raw = root / "raw"
        if not (raw / "truth" / "index.json").exists():
            generate(raw, patients=patients, seed=seed, sites=sites, progress=False)
        key = root / "keys" / "provider.key"
        if not key.exists():
            _write_test_key(key, seed)
        for site in sites:
            ingest(root / f"node-{site}", dataset=dataset_of(site), dicom=raw / site / "dicom",
                   clinical=raw / site / "clinical.xlsx", hosting="federated", secret_file=key,
                   country="GR", progress=False, actor=steward_of(site), jobs=2)
            _set_governance(root / f"node-{site}", site, vis[site])
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(params, indent=1, sort_keys=True))
        tmp.replace(marker)
    truth = {s: json.loads((root / "raw" / "truth" / f"{s}.json").read_text()) for s in sites}
    return Federation(root=root, nodes={s: root / f"node-{s}" for s in sites},
                      datasets={s: dataset_of(s) for s in sites}, visibility=vis,
                      requester=researcher(), truth=truth)


def shared_federation(tmp_path_factory: Any, **params: Any) -> Federation:
    """:func:`build_federation` once per parameter set per pytest session (for fixtures)."""
    p = {**STANDARD, **params}
    name = "fl-fed-{patients}p-s{seed}-{sites}".format(
        patients=p["patients"], seed=p["seed"], sites="".join(p.get("sites", ("a", "b", "c"))))
    root = Path(tmp_path_factory.getbasetemp()) / name
    return build_federation(root, **p)
