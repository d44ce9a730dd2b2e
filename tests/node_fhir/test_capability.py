"""The CapabilityStatement validates (R4B) and says exactly what the code accepts."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from incisive_lab.node.fhir_api import FhirApi, capability_statement
from tests.node_fhir.conftest import BASE

# A value each declared parameter type accepts.
SAMPLE = {"token": "http://loinc.org|21908-9", "reference": "Patient/PSN-X", "date": "ge2018",
          "number": "5", "string": None, "special": None}


@pytest.fixture(scope="module")
def statement() -> dict[str, Any]:
    return capability_statement(BASE)


def test_statement_validates_and_names_the_base(api: FhirApi, statement: dict[str, Any]) -> None:
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.3.0"
    assert statement["implementation"]["url"] == BASE
    r = api.handle("GET", "metadata", base_url=BASE + "/")
    assert r.status == 200 and r.body["implementation"]["url"] == BASE
    assert r.resources == ()


def test_resource_types_and_interactions(statement: dict[str, Any]) -> None:
    res = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(res) == {"Patient", "Condition", "Observation", "Procedure",
                        "MedicationStatement", "ImagingStudy", "Consent"}
    for rtype, r in res.items():
        codes = {i["code"] for i in r["interaction"]}
        base = {"read", "vread", "search-type"}
        assert codes == (base | {"create", "update"} if rtype == "Consent" else base)
        assert r["updateCreate"] is False


def test_every_declared_parameter_is_accepted(api: FhirApi, statement: dict[str, Any]) -> None:
    rest = statement["rest"][0]
    for r in rest["resource"]:
        for p in r["searchParam"]:
            value = "PSN-X" if p["name"] == "_id" else SAMPLE[p["type"]]
            if p["name"] in ("modality",):
                value = "CT"
            resp = api.handle("GET", r["type"], {p["name"]: value}, base_url=BASE)
            assert resp.status == 200, (r["type"], p["name"], resp.body)
        for inc in r.get("searchInclude", []):
            assert api.handle("GET", r["type"], {"_include": inc}, base_url=BASE).status == 200
        for key in r["documentation"].split("_sort: ")[1].split(".")[0].split(", "):
            resp = api.handle("GET", r["type"], {"_sort": key}, base_url=BASE)
            assert resp.status == 200, (r["type"], key)
        for p in rest["searchParam"]:
            value = {"_count": "5", "_offset": "1", "_sort": "_id", "_total": "accurate",
                     "_totalMethod": "count", "_format": "json",
                     "_include": (r.get("searchInclude") or [None])[0]}[p["name"]]
            if value is None:
                continue
            resp = api.handle("GET", r["type"], {p["name"]: value}, base_url=BASE)
            assert resp.status == 200, (r["type"], p["name"], resp.body)


def test_an_undeclared_parameter_is_refused(api: FhirApi, statement: dict[str, Any]) -> None:
    rest = statement["rest"][0]
    common = {p["name"] for p in rest["searchParam"]}
    every = {p["name"] for r in rest["resource"] for p in r["searchParam"]} | {
        "identifier", "status", "_lastUpdated", "_has", "_text", "_elements", "_summary",
        "_revinclude", "_contained"}
    for r in rest["resource"]:
        declared = {p["name"] for p in r["searchParam"]} | common
        for name in sorted(every - declared):
            resp = api.handle("GET", r["type"], {name: "x"}, base_url=BASE)
            assert resp.status == 400, (r["type"], name)
            assert name in resp.body["issue"][0]["diagnostics"]
