"""The dataset record: a HealthDCAT-AP description of one dataset, computed from the index.

:func:`build_record` makes a JSON-LD ``dcat:Dataset`` with the DCAT-AP / HealthDCAT-AP terms
and INCISIVE's imaging terms; :func:`validate_record` checks it (an error names the missing
or malformed field); :func:`write_record` writes it atomically to
``DIR/datasets/<name>.json``. :meth:`NodeStore.write_dataset_record` does all three.

Terms used
----------
``dct:identifier``, ``dct:title``, ``dct:description``
    The dataset name; title (default: the name); description (default: a sentence made
    from the index: cancer types, modalities, numbers).
``dcat:theme``
    The EU data theme *Health* (``.../data-theme/HEAL``).
``dct:publisher``
    A ``foaf:Agent``: the given publisher, else the node (its directory name).
``dct:spatial``
    The country (EU authority table ``.../country/<ISO 3166-1 alpha-3>``), when known.
``dct:temporal``
    The range of study dates.
``healthdcatap:numberOfRecords``
    The number of DICOM instances (the stored records of an imaging dataset).
``healthdcatap:numberOfUniqueIndividuals``
    The number of distinct patients (pseudonyms).
``healthdcatap:healthTheme``
    The cancer types (SNOMED CT concepts, ``http://snomed.info/id/<code>``).
``incisive:modality``, ``incisive:bodyPart``
    DICOM modalities (``DCM`` ontology IRIs) and body parts (``BodyPartExamined`` with its
    SNOMED CT concept when the curation mapped it).
``incisive:numberOfStudies``, ``incisive:numberOfSeries``, ``incisive:numberOfInstances``
    Counts from the index.
``incisive:hosting``
    ``federated`` (pseudonymised, stays at the provider) or ``central`` (anonymised).
``dct:provenance``
    A ``dct:ProvenanceStatement``: a readable label plus the ingest's details
    (de-identification mode, options, run).
``incisive:curation``
    The curation summary given by the ingest.
``dct:issued``, ``dct:modified``
    When the record was first written and when its content last changed (a rewrite with
    the same content keeps both, so re-running an ingest changes nothing).

Access terms are **not** written into the record file: they change without a new ingest.
The node's ``GET /catalogue`` adds the terms in force as ``incisive:accessTerms`` (see
:mod:`incisive_lab.node.governance_api`); a dataset without terms has no such key, never
a guessed one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from incisive_lab.node._db import StoreError
from incisive_lab.node.index import HOSTING, DatasetInfo

if TYPE_CHECKING:
    from incisive_lab.node.store import NodeStore

__all__ = ["CONTEXT", "RecordError", "build_record", "country_code", "validate_record",
           "write_record"]

#: JSON-LD context of the record.
CONTEXT: dict[str, str] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "healthdcatap": "http://healthdataportal.eu/ns/health#",
    "incisive": "urn:incisive-lab:terms:",
}
RECORD_FORMAT = "incisive-dataset-record/1"
THEME_HEALTH = "http://publications.europa.eu/resource/authority/data-theme/HEAL"
COUNTRY_BASE = "http://publications.europa.eu/resource/authority/country/"
SNOMED_BASE = "http://snomed.info/id/"
DCM_BASE = "http://dicom.nema.org/resources/ontology/DCM/"

#: ISO 3166-1 alpha-2 -> alpha-3 for the EU/EEA, the UK and Switzerland (the alpha-3
#: codes are those of the EU country authority table).
_ALPHA3 = {
    "AT": "AUT", "BE": "BEL", "BG": "BGR", "CH": "CHE", "CY": "CYP", "CZ": "CZE",
    "DE": "DEU", "DK": "DNK", "EE": "EST", "EL": "GRC", "ES": "ESP", "FI": "FIN",
    "FR": "FRA", "GB": "GBR", "GR": "GRC", "HR": "HRV", "HU": "HUN", "IE": "IRL",
    "IS": "ISL", "IT": "ITA", "LI": "LIE", "LT": "LTU", "LU": "LUX", "LV": "LVA",
    "MT": "MLT", "NL": "NLD", "NO": "NOR", "PL": "POL", "PT": "PRT", "RO": "ROU",
    "RS": "SRB", "SE": "SWE", "SI": "SVN", "SK": "SVK", "UK": "GBR",
}
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class RecordError(StoreError):
    """A dataset record misses a required field or has a malformed one (named)."""


def country_code(value: str) -> str:
    """Return the ISO 3166-1 alpha-3 code for ``value`` (alpha-3, or a European alpha-2).

    Raises
    ------
    RecordError
        When ``value`` is neither (the message names ``dct:spatial``).
    """
    code = value.strip().upper()
    if re.fullmatch(r"[A-Z]{3}", code):
        return code
    if code in _ALPHA3:
        return _ALPHA3[code]
    raise RecordError(f"dct:spatial: country {value!r} is not an ISO 3166-1 alpha-3 code "
                      "(or a European alpha-2 code)")


def _count(n: int) -> dict[str, Any]:
    return {"@value": int(n), "@type": "xsd:nonNegativeInteger"}


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else value


def build_record(store: NodeStore, info: DatasetInfo, *, provenance: Mapping[str, Any],
                 curation: Mapping[str, Any]) -> dict[str, Any]:
    """Build the record of dataset ``info`` from ``store``'s index (no dates yet).

    ``dct:issued``/``dct:modified`` are set by :func:`write_record`.

    Parameters
    ----------
    store
        The node store holding the dataset.
    info
        The dataset's row (name, hosting, title, description, country, publisher).
    provenance
        JSON-able details of how the data came to be (de-identification mode and
        options, the ingest run); a readable ``rdfs:label`` is made from them.
    curation
        JSON-able curation summary (e.g. counts of checks by severity, quarantined
        series/patients).
    """
    if info.hosting not in HOSTING:
        raise RecordError(f"dataset {info.name}: incisive:hosting {info.hosting!r} is not one "
                          f"of {HOSTING}")
    summary = store.index.summary(info.name)
    counts = summary.counts
    cancers = [{"@id": f"{SNOMED_BASE}{code}", "skos:notation": code,
                **({"skos:prefLabel": display} if display else {})}
               for code, display in summary.cancer_types]
    modalities = [{"@id": f"{DCM_BASE}{m}", "skos:notation": m} for m in summary.modalities]
    parts = [{"skos:notation": part,
              **({"@id": f"{SNOMED_BASE}{code}", "incisive:snomedCode": code} if code else {})}
             for part, code in summary.body_parts]
    description = info.description or _describe(info, summary)
    mode = provenance.get("deidentification", {}).get("mode") \
        if isinstance(provenance.get("deidentification"), Mapping) else None
    label = (f"De-identified ({mode}) at the provider with INCISIVE Lab; DICOM indexed from "
             f"{counts.instances} instances; clinical data converted to HL7 FHIR R4B."
             if mode else
             f"Ingested with INCISIVE Lab: {counts.instances} DICOM instances indexed.")
    record: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": f"urn:incisive-lab:dataset:{info.name}",
        "@type": "dcat:Dataset",
        "incisive:recordFormat": RECORD_FORMAT,
        "dct:identifier": info.name,
        "dct:title": {"@value": info.title or info.name, "@language": "en"},
        "dct:description": {"@value": description, "@language": "en"},
        "dcat:theme": [{"@id": THEME_HEALTH}],
        "dct:publisher": {"@type": "foaf:Agent",
                          "foaf:name": info.publisher or f"INCISIVE node {store.dir.name}"},
        "healthdcatap:numberOfRecords": _count(counts.instances),
        "healthdcatap:numberOfUniqueIndividuals": _count(counts.patients),
        "healthdcatap:healthTheme": cancers,
        "incisive:modality": modalities,
        "incisive:bodyPart": parts,
        "incisive:numberOfStudies": _count(counts.studies),
        "incisive:numberOfSeries": _count(counts.series),
        "incisive:numberOfInstances": _count(counts.instances),
        "incisive:hosting": info.hosting,
        "dct:provenance": {"@type": "dct:ProvenanceStatement", "rdfs:label": label,
                           "incisive:details": dict(provenance)},
        "incisive:curation": dict(curation),
    }
    if info.country:
        record["dct:spatial"] = {"@id": f"{COUNTRY_BASE}{country_code(info.country)}"}
    if summary.study_date_range:
        start, end = summary.study_date_range
        record["dct:temporal"] = {"@type": "dct:PeriodOfTime",
                                  "dcat:startDate": {"@value": _date(start), "@type": "xsd:date"},
                                  "dcat:endDate": {"@value": _date(end), "@type": "xsd:date"}}
    return record


def _describe(info: DatasetInfo, summary: Any) -> str:
    counts = summary.counts
    cancers = ", ".join(d or c for c, d in summary.cancer_types)
    mods = ", ".join(summary.modalities) or "no modality"
    hosting = "pseudonymised, kept at the provider (federated)" if info.hosting == "federated" \
        else "anonymised, hosted centrally"
    who = f"{counts.patients} patients" + (f" ({cancers})" if cancers else "")
    return (f"Imaging ({mods}) of {who}: {counts.studies} "
            f"studies, {counts.series} series, {counts.instances} DICOM instances; "
            f"{hosting}.")


_REQUIRED_COUNTS = ("healthdcatap:numberOfRecords", "healthdcatap:numberOfUniqueIndividuals",
                    "incisive:numberOfStudies", "incisive:numberOfSeries",
                    "incisive:numberOfInstances")


def validate_record(record: Mapping[str, Any], *, where: str = "dataset record") -> None:
    """Check that ``record`` has every required field, well formed.

    Raises
    ------
    RecordError
        Naming the first missing or malformed field.
    """
    def need(key: str) -> Any:
        if key not in record or record[key] in (None, "", [], {}):
            raise RecordError(f"{where}: required field {key} is missing")
        return record[key]

    if need("@type") != "dcat:Dataset":
        raise RecordError(f"{where}: @type must be dcat:Dataset")
    need("@context")
    if not isinstance(need("dct:identifier"), str):
        raise RecordError(f"{where}: dct:identifier must be a string")
    for key in ("dct:title", "dct:description"):
        value = need(key)
        if not (isinstance(value, Mapping) and isinstance(value.get("@value"), str)
                and value["@value"].strip()):
            raise RecordError(f"{where}: {key} must be a language-tagged non-empty text")
    themes = need("dcat:theme")
    if not any(isinstance(t, Mapping) and t.get("@id") == THEME_HEALTH for t in themes):
        raise RecordError(f"{where}: dcat:theme must include {THEME_HEALTH}")
    publisher = need("dct:publisher")
    if not (isinstance(publisher, Mapping) and publisher.get("foaf:name")):
        raise RecordError(f"{where}: dct:publisher needs a foaf:name")
    for key in _REQUIRED_COUNTS:
        value = need(key)
        if not (isinstance(value, Mapping) and isinstance(value.get("@value"), int)
                and value["@value"] >= 0):
            raise RecordError(f"{where}: {key} must be a non-negative integer")
    for key in ("healthdcatap:healthTheme", "incisive:modality", "incisive:bodyPart"):
        if not isinstance(record.get(key), list):
            raise RecordError(f"{where}: required field {key} is missing (a list, "
                              "possibly empty)")
    if record.get("incisive:hosting") not in HOSTING:
        raise RecordError(f"{where}: incisive:hosting must be one of {HOSTING}")
    prov = need("dct:provenance")
    if not (isinstance(prov, Mapping) and prov.get("rdfs:label")):
        raise RecordError(f"{where}: dct:provenance needs an rdfs:label")
    if not isinstance(record.get("incisive:curation"), Mapping):
        raise RecordError(f"{where}: required field incisive:curation is missing")
    if "dct:spatial" in record:
        spatial = record["dct:spatial"]
        if not (isinstance(spatial, Mapping) and str(spatial.get("@id", "")).startswith(
                COUNTRY_BASE)):
            raise RecordError(f"{where}: dct:spatial must name a country of {COUNTRY_BASE}")
    for key in ("dct:issued", "dct:modified"):
        value = need(key)
        if not (isinstance(value, Mapping) and isinstance(value.get("@value"), str)
                and _DATETIME.fullmatch(value["@value"])):
            raise RecordError(f"{where}: {key} must be an xsd:dateTime in UTC "
                              "(YYYY-MM-DDThh:mm:ssZ)")


def _stamp(value: str) -> dict[str, str]:
    return {"@value": value, "@type": "xsd:dateTime"}


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any], *,
                 now: str | None = None) -> Path:
    """Validate ``record`` and write it atomically to ``path`` (JSON, sorted keys).

    ``dct:issued`` is kept from an existing record at ``path`` (else ``now``);
    ``dct:modified`` is ``now`` only when the content other than these two dates
    changed, so rewriting the same content leaves the file untouched.

    Parameters
    ----------
    path
        ``DIR/datasets/<name>.json``.
    record
        From :func:`build_record` (without dates).
    now
        The time to record, ``YYYY-MM-DDThh:mm:ssZ`` (default: the current UTC time).

    Raises
    ------
    RecordError
        The record misses a required field (named).
    """
    target = Path(path)
    now = now or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {k: v for k, v in record.items() if k not in ("dct:issued", "dct:modified")}
    old: dict[str, Any] | None = None
    if target.exists():
        try:
            old = json.loads(target.read_text("utf-8"))
        except (OSError, ValueError):
            old = None  # unreadable: rewritten below
    if isinstance(old, dict):
        old_body = {k: v for k, v in old.items() if k not in ("dct:issued", "dct:modified")}
        issued = old.get("dct:issued", _stamp(now))
        if old_body == json.loads(json.dumps(body)) and "dct:modified" in old:
            validate_record(old, where=str(target))
            return target
    else:
        issued = _stamp(now)
    full = {**body, "dct:issued": issued, "dct:modified": _stamp(now)}
    validate_record(full, where=str(target))
    text = json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{target}: cannot write the dataset record: {exc.strerror}") from None
    return target
