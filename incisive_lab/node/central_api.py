"""The central node's removal endpoint (framework glue over :mod:`incisive_lab.node.removal`).

==========================  =======  =============================================================
route                       who      what
==========================  =======  =============================================================
``POST /central/removals``  steward  ``{"handle": "<64 hex>", "dataset"?: "<name>"}``: remove every
                                     patient whose removal tag the handle makes (of ``dataset``
                                     if given) → ``{"removed": {"patients", "studies",
                                     "instances", "records"}}``
==========================  =======  =============================================================

The answer is 200 whether or not anything matched, so a retry after a success is harmless
and the answer says nothing about a handle beyond the counts. Each removed patient is
first recorded as withdrawn through the node's governance (so grants holding them shrink,
ledgered there), then removed (:func:`incisive_lab.node.removal.remove_patient`), and
ledgered as ``erase``/``erase`` with the anonymous id at this node; a request that
matched nothing is ledgered once, with zero counts. A caller without the steward role is
refused by raising :class:`~incisive_lab.access.AccessDenied`, which the service's
handler answers 403 and ledgers as a denied access; a malformed body is answered 400 and
ledgered as a denied ``erase``. Neither the handle nor anything derived from it is
written to the ledger or the logs.

The token must be one issued for the central node's audience: a provider's node that
forwards its steward's token for its own audience is refused (``wrong-audience``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incisive_lab.access import Principal, Role
from incisive_lab.node.removal import (
    REMOVALS_PATH,
    RemovalError,
    Removed,
    check_handle,
    find_patients,
    remove_patient,
)

__all__ = ["add_central_routes"]

#: ``purpose`` of the ledger entries a removal writes.
PURPOSE = "consent-withdrawal"
_FIELDS = frozenset({"handle", "dataset"})


def add_central_routes(app: FastAPI, store: Any, ledger: Any, principal: Callable[[Request], Principal], *,
                       governance: Any = None) -> None:
    """Add ``POST /central/removals`` to ``app`` (see the module docstring).

    Parameters
    ----------
    app
        The node's application (:func:`incisive_lab.node.service.create_app`), whose
        ``AccessError`` handler answers and ledgers refusals.
    store
        The node store (:class:`~incisive_lab.node.store.NodeStore`).
    ledger
        The node's ledger.
    principal
        Verifies the caller (raises the service's ``AccessError``); a plain function, run
        off the event loop.
    governance
        The node's :class:`~incisive_lab.governance.store.Governance`, to record each
        removed patient's withdrawal first (grants shrink); default ``app.state.governance``
        when the app has one, else none is recorded.
    """
    from incisive_lab.ledger import Event, Outcome

    def governance_of() -> Any:
        return governance if governance is not None else getattr(app.state, "governance", None)

    def refuse(who: Principal, reason: str, message: str, status: int) -> JSONResponse:
        ledger.append(Event(kind="erase", actor=f"user:{who.subject}", action="erase",
                            resource=f"node:{REMOVALS_PATH}", purpose=PURPOSE, outcome=Outcome.deny(reason),
                            details={}))
        return JSONResponse({"error": reason, "message": message}, status_code=status)

    def remove(who: Principal, handle: str, dataset: str | None) -> JSONResponse:
        gov = governance_of()
        total = Removed()
        events = []
        try:
            for ds, patient in find_patients(store, handle, dataset=dataset):
                if gov is not None:
                    gov.withdraw_patient(ds, patient, steward=who.subject)  # excluded at once, grants shrink
                r = remove_patient(store, ds, patient)
                total = total + r
                events.append(Event(
                    kind="erase", actor=f"user:{who.subject}", action="erase", resource=f"patient:{patient}",
                    purpose=PURPOSE, outcome=Outcome.allow("role:steward"),
                    details={"dataset": ds, "patient": patient, "instances": r.instances, "records": r.records}))
        except RemovalError as exc:
            if events:
                ledger.append_many(events)
            return refuse(who, "removal-failed", str(exc), 503)  # retryable: an ingest was running
        if not events:
            events.append(Event(kind="erase", actor=f"user:{who.subject}", action="erase",
                                resource=f"node:{REMOVALS_PATH}", purpose=PURPOSE,
                                outcome=Outcome.allow("role:steward"), details={"instances": 0, "records": 0}))
        ledger.append_many(events)  # durable before the answer leaves
        return JSONResponse({"removed": {"patients": total.patients, "studies": total.studies,
                                         "instances": total.instances, "records": total.records}})

    @app.post(REMOVALS_PATH)
    async def central_removal(request: Request) -> JSONResponse:
        """Remove the patients of a removal handle (stewards; ledgered)."""
        who = await run_in_threadpool(principal, request)
        who.require_role(Role.STEWARD)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await run_in_threadpool(refuse, who, "invalid", "the body must be a JSON object", 400)
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            return await run_in_threadpool(refuse, who, "invalid", f"unknown field {unknown[0]!r}", 400)
        dataset = body.get("dataset")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            return await run_in_threadpool(refuse, who, "invalid", "dataset must be a non-empty string", 400)
        try:
            handle = check_handle(body.get("handle"), where="handle")
        except RemovalError as exc:
            return await run_in_threadpool(refuse, who, "invalid", str(exc), 400)
        return await run_in_threadpool(remove, who, handle, dataset)
