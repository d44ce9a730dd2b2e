"""FHIR search over an ingested node: every parameter and prefix, paging, _include, _sort.

Expected results come from an oracle written apart from the code under test: the resources
are read back whole and filtered in Python (dates as ranges of datetimes, per the FHIR
prefix definitions).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle

from incisive_lab.node.fhir_api import FhirApi, FhirResponse
from incisive_lab.node.fhir_store import FhirStore, _main_date
from incisive_lab.node.store import NodeStore
from tests.node_fhir.conftest import BASE

TYPES = ("Patient", "Condition", "Observation", "Procedure", "MedicationStatement",
         "ImagingStudy", "Consent")
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")


# -- oracle ----------------------------------------------------------------------------------

def _range(text: str) -> tuple[dt.datetime, dt.datetime]:
    """[low, high) of an ISO 8601 partial date/dateTime, in UTC (naive = UTC)."""
    m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?"
                     r"(Z|[+-]\d{2}:\d{2})?)?)?)?", text)
    assert m, text
    y, mo, d, h, mi, s, tz = m.groups()
    if h is not None:
        zone = dt.UTC if tz in (None, "Z") else dt.datetime.strptime(tz, "%z").tzinfo
        low = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0),
                          tzinfo=zone).astimezone(dt.UTC).replace(tzinfo=None)
        return low, low + dt.timedelta(seconds=1 if s is not None else 60)
    if d is not None:
        low = dt.datetime(int(y), int(mo), int(d))
        return low, low + dt.timedelta(days=1)
    if mo is not None:
        low = dt.datetime(int(y), int(mo), 1)
        return low, (dt.datetime(int(y) + 1, 1, 1) if mo == "12"
                     else dt.datetime(int(y), int(mo) + 1, 1))
    return dt.datetime(int(y), 1, 1), dt.datetime(int(y) + 1, 1, 1)


def date_matches(resource_date: str | None, prefix: str, value: str) -> bool:
    """FHIR R4B date-prefix semantics over ranges."""
    if resource_date is None:
        return False
    rl, rh = _range(resource_date)
    pl, ph = _range(value)
    eq = pl <= rl and rh <= ph
    return {"eq": eq, "ne": not eq, "lt": rl < pl, "gt": rh > ph, "le": rl < ph,
            "ge": rh > pl, "sa": rl >= ph, "eb": rh <= pl}[prefix]


def everything(fhir: FhirStore, rtype: str) -> list[dict[str, Any]]:
    return fhir.search(rtype)


def patient_of(res: Mapping[str, Any]) -> str | None:
    if res["resourceType"] == "Patient":
        return f"Patient/{res['id']}"
    for key in ("subject", "patient"):
        if key in res:
            return str(res[key]["reference"])
    return None


def codings(res: Mapping[str, Any], element: str) -> list[tuple[str, str]]:
    value = res.get(element)
    items = value if isinstance(value, list) else [value] if value else []
    out = []
    for item in items:
        for c in item.get("coding", [item] if "code" in item else []):
            out.append((c.get("system", ""), c["code"]))
    return out


# -- helpers ---------------------------------------------------------------------------------

def search(api: FhirApi, rtype: str, params: Any, **kw: Any) -> FhirResponse:
    r = api.handle("GET", rtype, params, base_url=BASE, roles={"researcher"}, **kw)
    assert r.status == 200, r.body
    return r


def ids(r: FhirResponse, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in r.body.get("entry", []) if e["search"]["mode"] == mode]


def refused(api: FhirApi, rtype: str, params: Any, status: int = 400) -> str:
    r = api.handle("GET", rtype, params, base_url=BASE, roles={"researcher"})
    assert r.status == status, r.body
    assert r.body["resourceType"] == "OperationOutcome"
    assert r.resources == ()
    return str(r.body["issue"][0]["diagnostics"])


def walk(api: FhirApi, rtype: str, params: list[tuple[str, str]]) -> list[str]:
    """Follow next links from the first page; every link must start with BASE."""
    r = search(api, rtype, params)
    seen = ids(r)
    while True:
        nxt = [x["url"] for x in r.body["link"] if x["relation"] == "next"]
        if not nxt:
            return seen
        url = nxt[0]
        assert url.startswith(BASE + "/")
        parts = urlsplit(url)
        path = parts.path[len(urlsplit(BASE).path) + 1:]
        r = search(api, path, parse_qsl(parts.query, keep_blank_values=True))
        seen += ids(r)


# -- tests -----------------------------------------------------------------------------------

def test_the_node_holds_what_the_ingest_made(store: NodeStore) -> None:
    counts = store.fhir.counts_by_type()
    assert set(counts) == set(TYPES)
    assert counts["Patient"] == 6
    assert counts["Observation"] > 20


@pytest.mark.parametrize("rtype", TYPES)
def test_search_without_parameters_returns_every_resource_in_a_valid_bundle(
        api: FhirApi, store: NodeStore, rtype: str) -> None:
    r = search(api, rtype, [("_count", "1000")])
    expected = sorted(x["id"] for x in everything(store.fhir, rtype))
    assert r.body["total"] == len(expected)
    assert ids(r) == expected          # default order: by id
    Bundle.model_validate(r.body)
    assert r.body["type"] == "searchset"
    for e in r.body["entry"]:
        assert e["fullUrl"] == f"{BASE}/{rtype}/{e['resource']['id']}"
        assert e["resource"]["meta"]["versionId"] == "1"
    assert r.resources == tuple(f"{rtype}/{i}" for i in expected)
    assert r.headers["Content-Type"].startswith("application/fhir+json")


def test_id_single_list_and_repeated(api: FhirApi, store: NodeStore) -> None:
    obs = sorted(x["id"] for x in everything(store.fhir, "Observation"))
    assert ids(search(api, "Observation", {"_id": obs[3]})) == [obs[3]]
    assert ids(search(api, "Observation", {"_id": f"{obs[5]},{obs[1]},nope"})) == [obs[1], obs[5]]
    # repeated parameters are ANDed
    both = search(api, "Observation", [("_id", f"{obs[1]},{obs[2]}"), ("_id", obs[2])])
    assert ids(both) == [obs[2]]
    assert search(api, "Observation", {"_id": "does-not-exist"}).body["total"] == 0


@pytest.mark.parametrize("rtype", [t for t in TYPES if t != "Patient"])
def test_patient_and_subject(api: FhirApi, store: NodeStore, rtype: str) -> None:
    resources = everything(store.fhir, rtype)
    patients = sorted({p for x in resources if (p := patient_of(x)) is not None})
    assert patients
    names = ["patient"] if rtype == "Consent" else ["patient", "subject"]
    for name in names:
        for ref in patients[:3]:
            assert ref is not None
            want = sorted(x["id"] for x in resources if patient_of(x) == ref)
            bare = ref.partition("/")[2]
            for value in (ref, bare, f"{BASE}/{ref}"):
                assert ids(search(api, rtype, {name: value})) == want
            assert ids(search(api, rtype, {f"{name}:Patient": bare})) == want
        two = f"{patients[0]},{patients[-1]}"
        want = sorted(x["id"] for x in resources if patient_of(x) in (patients[0], patients[-1]))
        assert ids(search(api, rtype, {name: two})) == want
    if rtype == "Consent":
        assert "subject" in refused(api, rtype, {"subject": patients[0]})


@pytest.mark.parametrize(("rtype", "param", "element"), [
    ("Observation", "code", "code"), ("Condition", "code", "code"),
    ("Procedure", "code", "code"), ("MedicationStatement", "code", "medicationCodeableConcept"),
    ("ImagingStudy", "modality", "modality"), ("Observation", "category", "category"),
    ("Consent", "category", "category")])
def test_token_forms(api: FhirApi, store: NodeStore, rtype: str, param: str,
                     element: str) -> None:
    resources = everything(store.fhir, rtype)
    tokens = sorted({t for x in resources for t in codings(x, element)})
    assert tokens, f"no {element} codings on {rtype}"
    for system, code in tokens[:4]:
        with_both = sorted(x["id"] for x in resources if (system, code) in codings(x, element))
        any_system = sorted(x["id"] for x in resources
                            if any(c == code for _, c in codings(x, element)))
        of_system = sorted(x["id"] for x in resources
                           if any(s == system for s, _ in codings(x, element)))
        assert ids(search(api, rtype, {param: f"{system}|{code}", "_count": "1000"})) == with_both
        assert ids(search(api, rtype, {param: code, "_count": "1000"})) == any_system
        assert ids(search(api, rtype, {param: f"{system}|", "_count": "1000"})) == of_system
        # |code: a code without a system; none are stored without one
        assert search(api, rtype, {param: f"|{code}"}).body["total"] == 0
        # a system that is not the code's finds nothing
        assert search(api, rtype, {param: f"urn:other|{code}"}).body["total"] == 0
    (s1, c1), (s2, c2) = tokens[0], tokens[-1]
    either = sorted(x["id"] for x in resources
                    if {(s1, c1), (s2, c2)} & set(codings(x, element)))
    assert ids(search(api, rtype, {param: f"{s1}|{c1},{s2}|{c2}", "_count": "1000"})) == either


DATE_PARAMS = [("Observation", "date"), ("Condition", "date"), ("Condition", "onset-date"),
               ("Procedure", "date"), ("ImagingStudy", "started"), ("ImagingStudy", "date"),
               ("Consent", "date"), ("MedicationStatement", "effective"),
               ("Patient", "birthdate")]


@pytest.mark.parametrize(("rtype", "param"), DATE_PARAMS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_date_prefixes_match_the_oracle(api: FhirApi, store: NodeStore, rtype: str, param: str,
                                        prefix: str) -> None:
    resources = everything(store.fhir, rtype)
    dates = sorted({d for x in resources if (d := _main_date(x)) is not None})
    probes = {"2016", "2018-08", "2018-08-24", "2018-08-24T10:00:00Z", "2018-08-24T23:30+02:00"}
    for d in dates[:3]:
        probes |= {d, d[:4], d[:7]}
    for value in sorted(probes):
        want = sorted(x["id"] for x in resources if date_matches(_main_date(x), prefix, value))
        got = ids(search(api, rtype, {param: prefix + value, "_count": "1000"}))
        assert got == want, (prefix, value)
    if prefix == "eq":   # no prefix means eq
        value = dates[0] if dates else "2018"
        assert (ids(search(api, rtype, {param: value, "_count": "1000"}))
                == ids(search(api, rtype, {param: "eq" + value, "_count": "1000"})))


def test_date_ranges_combine_as_and(api: FhirApi, store: NodeStore) -> None:
    resources = everything(store.fhir, "Observation")
    # a window around the data's own middle year (the de-identifier shifts dates by a key
    # generated per run, so fixed years may hold nothing)
    years = sorted(int(d[:4]) for x in resources if (d := _main_date(x)))
    low, high = f"{years[len(years) // 2] - 1}", f"{years[len(years) // 2] + 1}-09"
    want = sorted(x["id"] for x in resources
                  if date_matches(_main_date(x), "ge", low) and date_matches(_main_date(x), "lt", high))
    got = ids(search(api, "Observation", [("date", f"ge{low}"), ("date", f"lt{high}"),
                                          ("_count", "1000")]))
    assert got == want and got
    assert len(got) < len(resources) or years[0] >= int(low)  # the window does cut


MIXED = ["2017", "2018", "2018-07", "2018-08", "2018-08-01", "2018-08-24", "2018-08-31",
         "2018-09-01", "2018-12", "2019", "2018-08-24T10:00:00Z", "2018-08-24T10:30:00Z",
         "2018-08-24T00:00:00Z", "2018-01-01", "2018-01-01T00:00:00Z"]


def test_dates_of_every_precision_against_the_oracle(tmp_path: Any) -> None:
    """Stored dates of mixed precision (years, months, instants) compare as ranges."""
    with NodeStore.open(tmp_path / "node") as st:
        st.fhir.put_many([{"resourceType": "Observation", "id": f"o{i}", "status": "final",
                           "code": {"text": "x"}, "effectiveDateTime": d}
                          for i, d in enumerate(MIXED)])
        api = FhirApi(st.fhir)
        resources = st.fhir.search("Observation")
        probes = ["2018", "2018-01", "2018-08", "2018-08-24", "2018-08-24T10:00Z",
                  "2018-08-24T10:00:00Z", "2018-08-24T12:00:00+02:00", "2018-01-01",
                  "2018-01-01T00:00:00Z", "2017-12-31", "2019-01-01"]
        for prefix in PREFIXES:
            for value in probes:
                want = sorted(x["id"] for x in resources
                              if date_matches(x["effectiveDateTime"], prefix, value))
                got = ids(search(api, "Observation", {"date": prefix + value}))
                assert got == want, (prefix, value)


def test_paging_walks_every_resource_once_with_links_on_the_base(api: FhirApi,
                                                                 store: NodeStore) -> None:
    every = sorted(x["id"] for x in everything(store.fhir, "Observation"))
    for count in (1, 5, 7, len(every), 1000):
        seen = walk(api, "Observation", [("_count", str(count))])
        assert sorted(seen) == every and len(seen) == len(set(seen))
    first = search(api, "Observation", {"_count": "5", "_sort": "-date"})
    links = {x["relation"]: x["url"] for x in first.body["link"]}
    assert set(links) == {"self", "first", "next", "last"}
    assert all(u.startswith(BASE + "/Observation?") for u in links.values())
    assert "_sort=-date" in links["next"] and "_count=5" in links["next"]
    # a middle page has previous; the last page has no next
    middle = search(api, "Observation", {"_count": "5", "_offset": "5"})
    rel = {x["relation"]: x["url"] for x in middle.body["link"]}
    assert "previous" in rel and "next" in rel
    assert dict(parse_qsl(urlsplit(rel["previous"]).query)).get("_offset") is None
    last = search(api, "Observation", {"_count": "5", "_offset": str(len(every) - 1)})
    assert "next" not in {x["relation"] for x in last.body["link"]}
    assert last.body["total"] == len(every) and len(ids(last)) == 1
    beyond = search(api, "Observation", {"_count": "5", "_offset": "100000"})
    assert beyond.body["total"] == len(every) and "entry" not in beyond.body


def test_paging_keeps_filters_sort_and_includes(api: FhirApi, store: NodeStore) -> None:
    resources = everything(store.fhir, "Observation")
    want = sorted(x["id"] for x in resources if date_matches(_main_date(x), "ge", "2016"))
    seen = walk(api, "Observation", [("date", "ge2016"), ("_sort", "date"), ("_count", "4"),
                                     ("_include", "Observation:subject")])
    assert sorted(seen) == want


def test_count_zero_returns_only_the_total(api: FhirApi, store: NodeStore) -> None:
    r = search(api, "Observation", {"_count": "0", "_totalMethod": "count"})
    assert r.body["total"] == len(everything(store.fhir, "Observation"))
    assert "entry" not in r.body and r.resources == ()
    assert [x["relation"] for x in r.body["link"]] == ["self"]
    Bundle.model_validate(r.body)


@pytest.mark.parametrize("rtype", ["Observation", "Condition", "ImagingStudy", "Procedure",
                                   "Consent"])
def test_sort_by_date_both_ways_is_stable(api: FhirApi, store: NodeStore, rtype: str) -> None:
    resources = everything(store.fhir, rtype)
    dated = sorted((d, x["id"]) for x in resources if (d := _main_date(x)) is not None)
    undated = sorted(x["id"] for x in resources if _main_date(x) is None)
    up = ids(search(api, rtype, {"_sort": "date", "_count": "1000"}))
    assert up == [i for _, i in dated] + undated
    down = ids(search(api, rtype, {"_sort": "-date", "_count": "1000"}))
    assert down == [i for _, i in sorted(dated, key=lambda p: (_neg(p[0]), p[1]))] + undated
    assert ids(search(api, rtype, {"_sort": "-_id", "_count": "1000"})) == sorted(
        (x["id"] for x in resources), reverse=True)


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


@pytest.mark.parametrize(("rtype", "include"), [
    ("Observation", "Observation:patient"), ("Observation", "Observation:subject"),
    ("Condition", "Condition:subject:Patient"), ("ImagingStudy", "ImagingStudy:patient"),
    ("Consent", "Consent:patient"), ("MedicationStatement", "MedicationStatement:subject")])
def test_include_adds_the_patients_of_the_page(api: FhirApi, store: NodeStore, rtype: str,
                                               include: str) -> None:
    r = search(api, rtype, {"_include": include, "_count": "3"})
    matches = [e["resource"] for e in r.body["entry"] if e["search"]["mode"] == "match"]
    want = sorted({str(patient_of(m)).partition("/")[2] for m in matches})
    assert ids(r, "include") == want
    assert r.body["total"] == len(everything(store.fhir, rtype))   # includes are not counted
    for e in r.body["entry"]:
        if e["search"]["mode"] == "include":
            assert e["fullUrl"] == f"{BASE}/Patient/{e['resource']['id']}"
    assert set(r.resources) == ({f"{rtype}/{m['id']}" for m in matches}
                                | {f"Patient/{p}" for p in want})
    Bundle.model_validate(r.body)


def test_post_search_with_a_form_body(api: FhirApi, store: NodeStore) -> None:
    patient = store.fhir.search("Patient")[0]["id"]
    form = [("patient", patient), ("_count", "2")]
    r = api.handle("POST", ["Observation", "_search"], [("_sort", "date")], form=form,
                   base_url=BASE, roles={"researcher"})
    assert r.status == 200
    get = search(api, "Observation", [("_sort", "date"), *form])
    assert ids(r) == ids(get) and r.body["total"] == get.body["total"]
    assert r.body["link"][0]["url"].startswith(BASE + "/Observation?")
    assert api.handle("GET", ["Observation", "_search"], base_url=BASE).status == 405


def test_base_url_with_trailing_slash_and_multidict(api: FhirApi) -> None:
    class Multi(dict[str, str]):  # what Starlette's QueryParams offers besides a mapping
        def multi_items(self) -> list[tuple[str, str]]:
            return [("date", "ge2016"), ("date", "lt2016")]

    r = api.handle("GET", "/Observation", Multi(date="lt2016"), base_url=BASE + "/")
    assert r.status == 200 and r.body["total"] == 0     # both values were ANDed
    assert r.body["link"][0]["url"].startswith(BASE + "/Observation?date=ge2016&date=lt2016")


def test_read_and_vread(api: FhirApi, store: NodeStore) -> None:
    cond = store.fhir.search("Condition")[0]
    r = api.handle("GET", ["Condition", cond["id"]], base_url=BASE, roles={"researcher"})
    assert r.status == 200 and r.body == cond
    assert r.headers["ETag"] == 'W/"1"' and r.headers["Last-Modified"].endswith("GMT")
    assert r.resources == (f"Condition/{cond['id']}",)
    v = api.handle("GET", f"Condition/{cond['id']}/_history/1", base_url=BASE)
    assert v.status == 200 and v.body == cond
    gone = api.handle("GET", f"Condition/{cond['id']}/_history/7", base_url=BASE)
    assert gone.status == 404 and "only the current version" in gone.body["issue"][0]["diagnostics"]


def test_read_of_a_missing_or_malformed_id(api: FhirApi) -> None:
    r = api.handle("GET", "Patient/PSN-NOPE", base_url=BASE)
    assert r.status == 404 and r.body["issue"][0]["code"] == "not-found"
    assert "Patient/PSN-NOPE" in r.body["issue"][0]["diagnostics"]
    bad = api.handle("GET", ["Patient", "x' OR '1'='1"], base_url=BASE)
    assert bad.status == 400 and "not a FHIR id" in bad.body["issue"][0]["diagnostics"]
    other = api.handle("GET", "Encounter/1", base_url=BASE)
    assert other.status == 404 and "not served" in other.body["issue"][0]["diagnostics"]
    assert api.handle("GET", "", base_url=BASE).status == 404
    assert api.handle("GET", "Patient/a/b", base_url=BASE).status == 404


@pytest.mark.parametrize(("rtype", "params", "needle"), [
    ("Observation", {"name": "x"}, "unknown search parameter 'name'"),
    ("Observation", {"birthdate": "2018"}, "unknown search parameter 'birthdate'"),
    ("Patient", {"code": "x"}, "unknown search parameter 'code'"),
    ("Observation", {"_revinclude": "Observation:patient"}, "'_revinclude'"),
    ("Observation", {"_summary": "count"}, "'_summary'"),
    ("Observation", {"code:text": "grade"}, "modifier ':text'"),
    ("Observation", {"date": "2018-02-30"}, "not a valid date"),
    ("Observation", {"date": "yesterday"}, "not a FHIR date"),
    ("Observation", {"date": "xx2018"}, "not a FHIR date"),
    ("Observation", {"date": "ge2018,le2019"}, "comma-separated dates"),
    ("Observation", {"date": "2018-08-24T25:00Z"}, "not a valid date"),
    ("Observation", {"date": "0000"}, "year outside"),
    ("Observation", {"code": "a|b|c"}, "more than one '|'"),
    ("Observation", {"code": "|"}, "names neither"),
    ("Observation", {"code": "not a uri|123"}, "not an absolute URI"),
    ("Observation", {"code": "http://loinc.org|"}, None),
    ("Observation", {"code": "a,,b"}, "empty value"),
    ("Observation", {"code": ""}, "empty value"),
    ("Observation", {"code": "x" * 3000}, "longer than"),
    ("Observation", {"code": "1); DROP TABLE fhir_resources;--"}, "characters a code cannot"),
    ("Observation", {"code": "http://loinc.org|' OR '1'='1"}, "characters a code cannot"),
    ("Observation", {"_id": "' OR 1=1 --"}, "not a FHIR id"),
    ("Observation", {"patient": "Patient/x%' OR 1=1"}, "not Patient/<id>"),
    ("Observation", {"patient": "Group/1"}, "only Patient references"),
    ("Observation", {"subject": "a\x00b"}, "control characters"),
    ("Observation", {"_count": "100000"}, "maximum page size is 1000"),
    ("Observation", {"_count": "-1"}, "not a non-negative integer"),
    ("Observation", {"_count": "ten"}, "not a non-negative integer"),
    ("Observation", [("_count", "1"), ("_count", "2")], "given more than once"),
    ("Observation", {"_offset": "99999999999"}, "not a non-negative integer"),
    ("Observation", {"_sort": "code"}, "'code' is not supported"),
    ("Observation", {"_sort": "date,-_id"}, "not supported"),
    ("Patient", {"_sort": "date"}, "not supported for Patient"),
    ("Observation", {"_include": "Observation:performer"}, "not supported"),
    ("Observation", {"_include": "*"}, "not supported"),
    ("Patient", {"_include": "Patient:patient"}, "supported: none"),
    ("Observation", {"_total": "exact"}, "not none, estimate or accurate"),
])
def test_malformed_queries_are_refused_with_a_clear_message(
        api: FhirApi, rtype: str, params: Any, needle: str | None) -> None:
    if needle is None:   # system| is valid
        search(api, rtype, params)
        return
    message = refused(api, rtype, params)
    assert needle in message, message


def test_format_other_than_json_is_refused(api: FhirApi) -> None:
    assert "only JSON" in refused(api, "Observation", {"_format": "xml"}, status=406)
    assert search(api, "Observation", {"_format": "application/fhir+json"}).body["total"] > 0


def test_lenient_handling_ignores_unknown_parameters_only(api: FhirApi, store: NodeStore) -> None:
    r = search(api, "Observation", {"name": "x", "_count": "3"}, prefer="handling=lenient")
    assert r.body["total"] == len(everything(store.fhir, "Observation"))
    outcome = [e for e in r.body["entry"] if e["search"]["mode"] == "outcome"]
    assert "'name'" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "name=" not in r.body["link"][0]["url"]
    Bundle.model_validate(r.body)
    bad = api.handle("GET", "Observation", {"date": "soon"}, base_url=BASE,
                     prefer="handling=lenient")
    assert bad.status == 400
    strict = api.handle("GET", "Observation", {"name": "x"}, base_url=BASE,
                        prefer="handling=strict")
    assert strict.status == 400


def test_methods_not_allowed(api: FhirApi) -> None:
    for method, path in (("DELETE", "Observation/x"), ("POST", "Observation"),
                         ("PUT", "Patient/x"), ("PATCH", "Consent/x"), ("POST", "metadata")):
        r = api.handle(method, path, base_url=BASE, body={}, roles={"steward"})
        assert r.status == 405, (method, path)
        assert r.headers["Allow"]
