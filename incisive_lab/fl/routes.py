"""The broker's training endpoints (mounted by :func:`incisive_lab.federation.service.create_app`
when a :class:`~incisive_lab.fl.coordinator.Coordinator` is configured).

==============================  =====================================================
``POST /fl/runs``               submit a run (JSON :class:`RunSpec`; ``X-Purpose``)
``GET /fl/runs``                my runs, newest first
``GET /fl/runs/<id>``           status, per-round metrics, result
``POST /fl/runs/<id>/stop``     stop a running run
``GET /fl/runs/<id>/model``     the final model (``torch.save`` of a state dict)
==============================  =====================================================

A run belongs to whoever submitted it; anyone else gets 404, as for a run that does not
exist. The token of the submission goes to the nodes with the run: each node verifies it
and applies the user's grants itself. Every later request of the owner about their runs
passes its (fresher) token on to their running runs (:meth:`Coordinator.pass_on_token`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from incisive_lab.fl.coordinator import Coordinator, RunError, RunNotFound

__all__ = ["add_routes"]


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def add_routes(app: FastAPI, coordinator: Coordinator, caller: Callable[[Request], Awaitable[Any]],
               purpose_of: Callable[[Request], str]) -> None:
    """Mount the ``/fl/runs`` endpoints on the broker's app."""

    @app.post("/fl/runs")
    async def submit(request: Request) -> JSONResponse:
        who = await caller(request)
        token = (request.headers.get("authorization") or "").partition(" ")[2]
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid", "the body is not JSON")
        purpose = purpose_of(request).split(";")[0].strip()
        try:
            view = await run_in_threadpool(coordinator.submit, who.subject, who.username, token, purpose, body,
                                           token_expires=who.expires_at)
        except RunError as exc:
            return _error(400, "invalid", str(exc))
        return JSONResponse(view.to_json(), status_code=201)

    async def owner(request: Request) -> Any:
        who = await caller(request)
        token = (request.headers.get("authorization") or "").partition(" ")[2]
        if token:
            await run_in_threadpool(coordinator.pass_on_token, who.subject, token, who.expires_at)
        return who

    @app.get("/fl/runs")
    async def runs(request: Request) -> JSONResponse:
        who = await owner(request)
        views = await run_in_threadpool(coordinator.list, who.subject)
        return JSONResponse({"runs": [v.to_json() for v in views]})

    @app.get("/fl/runs/{run_id}")
    async def run(request: Request, run_id: str) -> JSONResponse:
        who = await owner(request)
        try:
            view = await run_in_threadpool(coordinator.get, who.subject, run_id)
        except RunNotFound as exc:
            return _error(404, "not-found", str(exc))
        return JSONResponse(view.to_json())

    @app.post("/fl/runs/{run_id}/stop")
    async def stop(request: Request, run_id: str) -> JSONResponse:
        who = await caller(request)
        try:
            view = await run_in_threadpool(coordinator.stop, who.subject, run_id)
        except RunNotFound as exc:
            return _error(404, "not-found", str(exc))
        except RunError as exc:
            return _error(409, "cannot-stop", str(exc))
        return JSONResponse(view.to_json())

    @app.get("/fl/runs/{run_id}/model")
    async def model(request: Request, run_id: str) -> Response:
        who = await caller(request)
        try:
            data = await run_in_threadpool(coordinator.model, who.subject, run_id)
        except RunNotFound as exc:
            return _error(404, "not-found", str(exc))
        return Response(data, media_type="application/octet-stream")
