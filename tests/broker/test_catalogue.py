"""The federated catalogue over HTTP (three real nodes): the merged HealthDCAT-AP catalogue,
search by each facet (a positive and a negative case each, expectations read from the
nodes' own record files), facet counts, bad searches, and a node down at refresh."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.broker.conftest import TERMS, Federation
from tests.broker.doubles import SlowNode, serve_broker


@pytest.fixture(scope="module")
def broker_url(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_broker(federation.settings(tmp_path_factory.mktemp("catalogue-state"), timeout=20)) as url:
        yield url


def _search(url: str, fed: Federation, params: list[tuple[str, str]]) -> httpx.Response:
    return httpx.get(url + "/catalogue/search", params=params, headers=fed.h("researcher"), timeout=60)


def _refs(fed: Federation, keep: Callable[[str, dict[str, Any]], bool]) -> set[str]:
    return {ref for ref, record in fed.records.items() if keep(ref, record)}


def _notations(record: dict[str, Any], key: str) -> set[str]:
    return {i["skos:notation"] for i in record[key]}


def test_the_merged_catalogue_is_one_dcat_catalog_of_every_node(broker_url: str, federation: Federation) -> None:
    r = httpx.get(broker_url + "/catalogue", headers=federation.h("researcher"), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    cat = r.json()
    assert cat["@type"] == "dcat:Catalog" and "dcat" in cat["@context"]
    assert {e["incisive:ref"] for e in cat["dcat:dataset"]} == set(federation.records)
    for entry in cat["dcat:dataset"]:
        assert entry["@type"] == "dcat:Dataset" and entry["@id"].endswith(entry["incisive:ref"])
        assert entry["incisive:stale"] is False
        dataset = entry["dct:identifier"]
        assert entry["incisive:accessTerms"]["floor"] == TERMS[dataset]["floor"]
    assert [(n["name"], n["status"], n["datasets"]) for n in cat["incisive:nodes"]] == [
        ("node-a", "ok", 1), ("node-b", "ok", 1), ("node-c", "ok", 1)]
    assert cat["incisive:partial"] is False


def _pick(records: dict[str, dict[str, Any]], key: str) -> str:
    """A value of ``key`` that some records lack when there is one (a sharper test), else any."""
    values = [_notations(r, key) for r in records.values()]
    every = set.intersection(*values)
    return sorted(set.union(*values), key=lambda v: (v in every, v))[0]


def _cases(fed: Federation) -> list[tuple[str, list[tuple[str, str]], set[str]]]:
    """(facet, search, expected refs) — a positive and a negative case per facet."""
    recs = fed.records
    any_ref = sorted(recs)[1]
    title_word = recs[any_ref]["dct:description"]["@value"].split()[0]
    modality = _pick(recs, "incisive:modality")
    part = _pick(recs, "incisive:bodyPart")
    part_code = next(i["incisive:snomedCode"] for r in recs.values() for i in r["incisive:bodyPart"]
                     if i["skos:notation"] == part)
    cancer = _pick(recs, "healthdcatap:healthTheme")
    instances = sorted(r["incisive:numberOfInstances"]["@value"] for r in recs.values())

    def has(key: str, value: str) -> Callable[[str, dict[str, Any]], bool]:
        return lambda _ref, r: value in _notations(r, key)

    def terms(dataset_ref: str) -> dict[str, Any]:
        return TERMS[dataset_ref.split("/")[1]]

    return [
        ("q", [("q", "SITE-B imaging")], _refs(fed, lambda ref, _r: ref == "node-b/site-b")),
        ("q", [("q", title_word.lower())], set(recs)),
        ("q", [("q", "glioblastoma")], set()),
        ("cancer_type", [("cancer_type", cancer)], _refs(fed, has("healthdcatap:healthTheme", cancer))),
        ("cancer_type", [("cancer_type", "363346000")], set(recs)),  # the parent finds every cancer
        ("cancer_type", [("cancer_type", "372244006")], set()),      # melanoma: in no dataset
        ("modality", [("modality", modality.lower())], _refs(fed, has("incisive:modality", modality))),
        ("modality", [("modality", "PT")], set()),
        ("body_part", [("body_part", part)], _refs(fed, has("incisive:bodyPart", part))),
        ("body_part", [("body_part", part_code)], _refs(fed, has("incisive:bodyPart", part))),
        ("body_part", [("body_part", "KNEE")], set()),
        ("country", [("country", "GR")], {"node-a/site-a"}),
        ("country", [("country", "ITA"), ("country", "es")], {"node-b/site-b", "node-c/site-c"}),
        ("country", [("country", "FR")], set()),
        ("size", [("min_instances", str(instances[-1]))],
         _refs(fed, lambda _ref, r: r["incisive:numberOfInstances"]["@value"] == instances[-1])),
        ("size", [("min_patients", "6"), ("max_patients", "6")],
         _refs(fed, lambda _ref, r: r["healthdcatap:numberOfUniqueIndividuals"]["@value"] == 6)),
        ("size", [("min_patients", "1000")], set()),
        ("hosting", [("hosting", "central")], {"node-c/site-c"}),
        ("hosting", [("hosting", "federated"), ("country", "ES")], set()),
        ("purpose", [("purpose", "ai-development")],
         _refs(fed, lambda ref, _r: "ai-development" in terms(ref)["purposes"])),
        ("purpose", [("purpose", "education")], set()),
        ("visibility", [("visibility", "train-only")], {"node-b/site-b"}),
        ("visibility", [("visibility", "none")], set()),
        ("organisation", [("organisation", "hospital-c.example")], set(recs)),
        ("organisation", [("organisation", "elsewhere.example")],
         _refs(fed, lambda ref, _r: "*" in terms(ref)["organisations"])),
        ("organisation", [("organisation", "elsewhere.example"), ("node", "node-c")], set()),
        ("node", [("node", "node-a")], {"node-a/site-a"}),
        ("node", [("node", "node-z")], set()),
    ]


def test_search_by_each_facet(broker_url: str, federation: Federation) -> None:
    cases = _cases(federation)
    facets = {c[0] for c in cases}
    assert facets >= {"q", "cancer_type", "modality", "body_part", "country", "size", "hosting", "purpose",
                      "visibility", "organisation"}
    for facet in facets:  # each facet: at least one case that finds something and one that finds nothing
        found = [bool(expected) for f, _p, expected in cases if f == facet]
        assert True in found and False in found, facet
    for facet, params, expected in cases:
        r = _search(broker_url, federation, params)
        assert r.status_code == 200, (facet, params, r.text)
        body = r.json()
        assert {d["incisive:ref"] for d in body["datasets"]} == expected, (facet, params)
        assert body["total"] == len(expected)
        assert sum(v["count"] for v in body["facets"]["node"]) == len(expected)


def test_facet_counts_describe_the_matches(broker_url: str, federation: Federation) -> None:
    body = _search(broker_url, federation, []).json()
    assert body["total"] == 3 and body["partial"] is False
    facets = body["facets"]
    modality_counts = {f["value"]: f["count"] for f in facets["modality"]}
    expected = {}
    for record in federation.records.values():
        for m in _notations(record, "incisive:modality"):
            expected[m] = expected.get(m, 0) + 1
    assert modality_counts == expected
    assert {f["value"]: f["count"] for f in facets["hosting"]} == {"federated": 2, "central": 1}
    assert {f["value"]: f["count"] for f in facets["country"]} == {"GRC": 1, "ITA": 1, "ESP": 1}
    assert {f["value"]: f["count"] for f in facets["visibility"]} == {"visible": 2, "train-only": 1}
    assert all("label" in f for f in facets["cancer_type"])
    paged = _search(broker_url, federation, [("limit", "1"), ("offset", "1")]).json()
    assert len(paged["datasets"]) == 1 and paged["total"] == 3 and paged["facets"] == facets


@pytest.mark.parametrize(("params", "word"), [
    ([("colour", "red")], "colour"),
    ([("cancer_type", "lung")], "cancer_type"),
    ([("country", "Atlantis")], "country"),
    ([("hosting", "cloud")], "hosting"),
    ([("purpose", "marketing")], "purpose"),
    ([("visibility", "public")], "visibility"),
    ([("min_patients", "-1")], "min_patients"),
    ([("min_patients", "9"), ("max_patients", "2")], "min_patients"),
    ([("limit", "0")], "limit"),
    ([("limit", "5"), ("limit", "6")], "limit"),
])
def test_a_bad_search_is_refused_naming_the_parameter(broker_url: str, federation: Federation,
                                                      params: list[tuple[str, str]], word: str) -> None:
    r = _search(broker_url, federation, params)
    assert r.status_code == 400 and r.json()["error"] == "invalid-search"
    assert word in r.json()["message"]


def test_a_node_down_at_refresh_keeps_its_last_catalogue_marked_stale(
        federation: Federation, tmp_path: Path) -> None:
    with SlowNode(federation.urls["node-c"]) as proxy:
        urls = {**federation.urls, "node-c": proxy.url}
        with serve_broker(federation.settings(tmp_path / "state", urls, timeout=2, catalogue_ttl=0)) as url:
            def catalogue() -> dict[str, Any]:
                r = httpx.get(url + "/catalogue", headers=federation.h("researcher"), timeout=60)
                assert r.status_code == 200
                return dict(r.json())

            fresh = catalogue()
            assert {e["incisive:ref"]: e["incisive:stale"] for e in fresh["dcat:dataset"]}["node-c/site-c"] is False
            proxy.down = True  # node-c crashes
            stale = catalogue()
            entries = {e["incisive:ref"]: e for e in stale["dcat:dataset"]}
            assert set(entries) == set(federation.records), "the last catalogue of node-c is kept"
            assert entries["node-c/site-c"]["incisive:stale"] is True
            assert entries["node-a/site-a"]["incisive:stale"] is False
            nodes = {n["name"]: n for n in stale["incisive:nodes"]}
            assert nodes["node-c"]["status"] == "error" and nodes["node-c"]["stale"] is True
            assert stale["incisive:partial"] is True
            # searches still find it, and say the answer is partial
            r = httpx.get(url + "/catalogue/search", params={"hosting": "central"},
                          headers=federation.h("researcher"), timeout=60).json()
            assert [d["incisive:ref"] for d in r["datasets"]] == ["node-c/site-c"] and r["partial"] is True
            proxy.down = False  # back: fresh again
            again = catalogue()
            assert not any(e["incisive:stale"] for e in again["dcat:dataset"])
