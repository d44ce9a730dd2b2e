"""Sharing terms: what a provider allows for one dataset (set by its steward).

The terms are a small, strictly validated document. Anything unknown is refused (fail
closed): an unknown key, role, purpose or level of assurance is an error naming the field,
never silently ignored. Each version is kept; a change makes a new version, and its SHA-256
(over the canonical JSON) is what the ledger records.

Fields
------
``hosting``
    ``federated`` (images stay at the node, pseudonymised) or ``central`` (anonymised
    copy on the central node).
``visibility``
    ``visible``: approved users may view images and list members; ``train-only``: usable
    for federated training and aggregate (suppressed) counts only, never viewable.
``organisations``
    Organisations whose members may use the dataset (the token's
    ``schac_home_organization`` claim, as in eduGAIN / EU research AAIs), or ``["*"]`` for
    any organisation.
``roles``
    Project roles that may use it (``researcher``, ``annotator``, ...).
``purposes``
    Permitted purposes, from :data:`PURPOSES`.
``min_loa``
    The lowest eIDAS level of assurance: ``low``, ``substantial`` or ``high``.
``floor``
    The small-count floor (default 10, at least :data:`MIN_FLOOR`). A broker may raise it
    for its answers, never lower it.
``expires``
    The date after which the terms no longer allow anything (``YYYY-MM-DD``), or null.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from incisive_lab.access import LoA, Role
from incisive_lab.cohort.disclosure import DEFAULT_FLOOR, MIN_FLOOR
from incisive_lab.errors import IncisiveLabError

__all__ = ["DEFAULT_FLOOR", "MIN_FLOOR", "PURPOSES", "SharingTerms", "TermsError", "Visibility"]

#: Permitted purposes. Where a GA4GH Data Use Ontology term says the same, it is given.
PURPOSES: Mapping[str, str] = {
    "general-research": "general research use (DUO:0000042)",
    "health-research": "health, medical or biomedical research (DUO:0000006)",
    "cancer-research": "research on the dataset's cancer types (disease-specific, DUO:0000007)",
    "ai-development": "developing and training AI models",
    "ai-validation": "validating or benchmarking AI models",
    "education": "teaching and training of professionals",
}
_HOSTINGS = ("federated", "central")
_KEYS = frozenset({"dataset", "hosting", "visibility", "organisations", "roles", "purposes", "min_loa",
                   "floor", "expires", "version"})


class TermsError(IncisiveLabError):
    """Sharing terms that cannot be accepted (the message names the field)."""


class Visibility(StrEnum):
    """Whether approved users may see the data, or only train on and count it."""

    VISIBLE = "visible"
    TRAIN_ONLY = "train-only"


def _strings(doc: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise TermsError(f"{where}: {key} must be a non-empty list of strings")
    return [v.strip() for v in value]


@dataclass(frozen=True)
class SharingTerms:
    """One version of a dataset's sharing terms (see the module doc)."""

    dataset: str
    hosting: str
    visibility: Visibility
    organisations: frozenset[str]
    roles: frozenset[Role]
    purposes: frozenset[str]
    min_loa: LoA = LoA.SUBSTANTIAL
    floor: int = DEFAULT_FLOOR
    expires: date | None = None
    version: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"terms of {self.dataset or '?'}"
        if not self.dataset:
            raise TermsError("terms: dataset is missing")
        if self.hosting not in _HOSTINGS:
            raise TermsError(f"{where}: hosting must be one of {', '.join(_HOSTINGS)} (got {self.hosting!r})")
        if not isinstance(self.floor, int) or isinstance(self.floor, bool) or self.floor < MIN_FLOOR:
            raise TermsError(f"{where}: floor must be an integer of at least {MIN_FLOOR} (got {self.floor!r})")
        unknown = sorted(self.purposes - set(PURPOSES))
        if unknown:
            raise TermsError(f"{where}: unknown purpose {unknown[0]!r} (known: {', '.join(PURPOSES)})")
        if not self.purposes or not self.roles or not self.organisations:
            raise TermsError(f"{where}: organisations, roles and purposes may not be empty")

    # ---------------------------------------------------------------- JSON

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, dataset: str | None = None) -> SharingTerms:
        """Parse a terms document; every problem is a :class:`TermsError` naming the field."""
        if not isinstance(doc, Mapping):
            raise TermsError("terms: the document must be a JSON object")
        name = str(doc.get("dataset") or dataset or "")
        where = f"terms of {name or '?'}"
        unknown = sorted(set(doc) - _KEYS)
        if unknown:
            raise TermsError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(_KEYS))})")
        if dataset is not None and doc.get("dataset") not in (None, dataset):
            raise TermsError(f"{where}: the document names dataset {doc.get('dataset')!r}, not {dataset!r}")
        try:
            visibility = Visibility(str(doc.get("visibility")))
        except ValueError:
            raise TermsError(f"{where}: visibility must be 'visible' or 'train-only' "
                             f"(got {doc.get('visibility')!r})") from None
        roles = set()
        for r in _strings(doc, "roles", where):
            try:
                roles.add(Role(r))
            except ValueError:
                raise TermsError(f"{where}: unknown role {r!r} (known: {', '.join(x.value for x in Role)})") from None
        loa_name = doc.get("min_loa", "substantial")
        try:
            min_loa = LoA[str(loa_name).upper()]
        except KeyError:
            raise TermsError(f"{where}: min_loa must be low, substantial or high (got {loa_name!r})") from None
        expires = doc.get("expires")
        expiry: date | None = None
        if expires is not None:
            try:
                expiry = date.fromisoformat(str(expires))
            except ValueError:
                raise TermsError(f"{where}: expires must be a date YYYY-MM-DD or null (got {expires!r})") from None
        floor = doc.get("floor", DEFAULT_FLOOR)
        version = doc.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TermsError(f"{where}: version must be a positive integer (got {version!r})")
        return cls(dataset=name, hosting=str(doc.get("hosting", "")), visibility=visibility,
                   organisations=frozenset(_strings(doc, "organisations", where)), roles=frozenset(roles),
                   purposes=frozenset(_strings(doc, "purposes", where)), min_loa=min_loa, floor=floor,
                   expires=expiry, version=version)

    def to_json(self) -> dict[str, Any]:
        """The document (lists sorted, so equal terms give equal JSON)."""
        return {"dataset": self.dataset, "hosting": self.hosting, "visibility": self.visibility.value,
                "organisations": sorted(self.organisations), "roles": sorted(r.value for r in self.roles),
                "purposes": sorted(self.purposes), "min_loa": self.min_loa.name.lower(), "floor": self.floor,
                "expires": self.expires.isoformat() if self.expires else None, "version": self.version}

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON (what the ledger records)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def expired(self, today: date) -> bool:
        """Whether the terms have expired on ``today``."""
        return self.expires is not None and today > self.expires

    def allows_organisation(self, organisation: str | None) -> bool:
        """Whether members of ``organisation`` may use the dataset (unknown → no)."""
        if "*" in self.organisations:
            return True
        return organisation is not None and organisation in self.organisations
