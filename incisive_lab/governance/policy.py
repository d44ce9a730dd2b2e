"""The authorisation decision: may this person do this with this dataset, now?

One pure function, :func:`decide`, over plain values — who asks (:class:`Requester`),
what for (:class:`Action`), the dataset's :class:`~.terms.SharingTerms`, and the
requester's :class:`Grant` if any — so the whole role × terms × grant matrix can be
tested without a server, and every caller (node service, broker, training) decides the
same way. It fails closed: no terms, an unknown role, a missing organisation or an
expired grant all deny, with a reason code that goes to the ledger.

======================  ===========================================================
action                  needs
======================  ===========================================================
``discover``            any authenticated person (the catalogue is for discovery)
``count``               terms in force, LoA, role, organisation, purpose; no grant —
                        answers are suppressed below the floor
``list-members``        the above, an active grant for the purpose, ``visible`` terms
``view``                the above, and the patient inside the grant's cohort
``train``               the above but ``train-only`` datasets are allowed; the patient
                        (when checked) inside the cohort
======================  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from incisive_lab.access import LoA, Role
from incisive_lab.governance.terms import SharingTerms, Visibility

__all__ = ["Action", "Decision", "Grant", "Requester", "decide"]


class Action(StrEnum):
    """What a requester wants to do with a dataset."""

    DISCOVER = "discover"
    COUNT = "count"
    LIST_MEMBERS = "list-members"
    VIEW = "view"
    TRAIN = "train"


@dataclass(frozen=True)
class Requester:
    """Who asks: the verified token's subject, roles, organisation and level of assurance."""

    subject: str
    roles: frozenset[Role]
    loa: LoA | None
    organisation: str | None = None


@dataclass(frozen=True)
class Grant:
    """An approved access request: a dataset, for a purpose, until a time, over a frozen cohort.

    ``members`` is the cohort frozen at approval (patient pseudonyms); withdrawals are
    subtracted by the store, so it can only shrink. ``None`` means the whole dataset as
    it was at approval is not tracked per patient (never issued by this node's store).
    """

    grant_id: str
    dataset: str
    grantee: str
    purpose: str
    expires: datetime
    members: frozenset[str] = field(default_factory=frozenset)
    revoked: bool = False


@dataclass(frozen=True)
class Decision:
    """Allowed or not, and why (a stable reason code for the ledger)."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def _deny(reason: str) -> Decision:
    return Decision(False, reason)


def decide(requester: Requester, action: Action | str, terms: SharingTerms | None, *,
           purpose: str | None, now: datetime, grant: Grant | None = None,
           patient: str | None = None) -> Decision:
    """Decide one request (see the module doc for the table).

    Parameters
    ----------
    requester
        Who asks.
    action
        What for.
    terms
        The dataset's terms in force (``None``: the dataset has none, so nothing but
        discovery is allowed).
    purpose
        The purpose the requester declares (the ``X-Purpose`` header's term).
    now
        The time of the request (timezone-aware).
    grant
        The requester's grant for this dataset, if any.
    patient
        The patient a ``view`` or ``train`` touches, when it touches one.
    """
    act = Action(action)
    if act is Action.DISCOVER:
        return Decision(True, "discovery")
    if terms is None:
        return _deny("no-terms")
    if terms.expired(now.date()):
        return _deny("terms-expired")
    if requester.loa is None or requester.loa < terms.min_loa:
        return _deny("loa-too-low")
    if not (requester.roles & terms.roles):
        return _deny("role-not-allowed")
    if not terms.allows_organisation(requester.organisation):
        return _deny("organisation-not-allowed")
    if purpose is None or purpose not in terms.purposes:
        return _deny("purpose-not-permitted")
    if act is Action.COUNT:
        return Decision(True, "terms")
    if act in (Action.LIST_MEMBERS, Action.VIEW) and terms.visibility is Visibility.TRAIN_ONLY:
        return _deny("train-only")
    if grant is None:
        return _deny("no-grant")
    if grant.dataset != terms.dataset or grant.grantee != requester.subject:
        return _deny("grant-mismatch")
    if grant.revoked:
        return _deny("grant-revoked")
    if now >= grant.expires:
        return _deny("grant-expired")
    if grant.purpose != purpose:
        return _deny("purpose-not-granted")
    if patient is not None and patient not in grant.members:
        return _deny("outside-cohort")
    return Decision(True, f"grant:{grant.grant_id}")
