"""What one caller may read at a node, for one purpose: patients per dataset.

Every read of images or clinical data (DICOMweb QIDO-RS/WADO-RS, FHIR reads and
searches) is limited to a :class:`ReadScope`, computed by
:meth:`incisive_lab.governance.store.Governance.read_scope` from the caller's grants:

* a dataset is in scope when :func:`~incisive_lab.governance.policy.decide` allows
  ``view`` under one of the caller's active grants for the declared purpose (terms in
  force, LoA, role, organisation, purpose, ``visible`` — a ``train-only`` dataset never
  is);
* within it, only the grant's frozen cohort, without patients who withdrew consent;
* the node's own stewards (``staff``) see every consenting patient of every dataset.

The scope is plain data, so the DICOMweb and FHIR layers turn it into SQL conditions and
paging stays right (a page is cut after filtering, never before).

Example
-------
>>> scope = ReadScope("ai-development", {"site-a": frozenset({"PSN-1", "PSN-2"})})
>>> scope.allows("site-a", "PSN-1"), scope.allows("site-a", "PSN-9"), scope.allows("site-b", "PSN-1")
(True, False, False)
>>> bool(ReadScope("ai-development", {}, {"site-a": "no-grant"}))
False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ReadScope"]


@dataclass(frozen=True)
class ReadScope:
    """Patients per dataset one caller may read for one purpose (see the module doc).

    ``cohorts`` maps a dataset to the patient pseudonyms in scope; ``denied`` maps the
    datasets the caller holds a grant for but may not read now to the reason (for the
    ledger and the error message); ``staff`` marks the node's own stewards; ``whole``
    (an optimisation, never a widening) names datasets whose cohort is all their patients
    but the listed ones.
    """

    purpose: str | None
    cohorts: Mapping[str, frozenset[str]]
    denied: Mapping[str, str] = field(default_factory=dict)
    staff: bool = False
    #: Datasets whose cohort is every patient the node holds in them but these (withdrawn):
    #: SQL can say "this dataset, not these few" instead of listing every patient.
    whole: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, dataset: str | None, patient: str | None) -> bool:
        """Whether the patient's data in ``dataset`` is in scope (unknown → no)."""
        if dataset is None or patient is None:
            return False
        members = self.cohorts.get(dataset)
        return members is not None and patient in members

    def __bool__(self) -> bool:
        return any(self.cohorts.values())

    @property
    def reason(self) -> str:
        """Why nothing (or not this) is in scope: the first denial reason, else ``no-grant``."""
        if self.denied:
            return self.denied[sorted(self.denied)[0]]
        return "no-grant" if not self.cohorts else "outside-cohort"

    def explain(self) -> str:
        """A sentence for the caller when a read is refused."""
        purpose = f"purpose {self.purpose!r}" if self.purpose else "no purpose (send X-Purpose)"
        if not self.cohorts and not self.denied:
            return f"you hold no grant at this node for {purpose}; request access first"
        if not self:
            reasons = ", ".join(f"{d}: {r}" for d, r in sorted(self.denied.items()))
            return f"none of your grants allows viewing for {purpose} ({reasons})"
        return f"this is not within your grants for {purpose}"
