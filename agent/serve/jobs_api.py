"""``/v1/jobs``: submit a job, follow it, fetch its result, cancel it (docs/jobs.md).

A job lives at its home node (the one it was submitted to; its id starts
with that node's name, unless its keeper took it over: ``taken_from``).
Another node answers 404 naming the home, whose API address is in
``.fleet/peers.json``; ``orbitmesh job`` goes there by itself, and to the
job's keeper when the home does not answer.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Awaitable, Callable

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent.runtime.job_host import submit_job, wait_left
from agent.runtime.job_journal import JobJournalError
from agent.runtime.job_spec import JobError
from agent.runtime.jobs import Job
from agent.runtime.tasks import SubmitError

MAX_WAIT_S = 60.0


def home_of(job_id: str) -> str:
    return job_id.rsplit("-job-", 1)[0] if "-job-" in job_id else ""


def job_routes(node: Any, read_task: Callable[[Request, int], Awaitable[Any]]) -> list[Route]:
    """``read_task``: a body as JSON, or a JSON header and binary tensors (``agent.serve.api.read_task``)."""
    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def find(job_id: str) -> Job:
        job = node.jobs.get(job_id)
        if job is not None:
            return job
        home = home_of(job_id)
        try:
            kept = node.job_copies.kept(job_id)
        except (sqlite3.Error, JobJournalError) as exc:
            raise JobError(503, f"{node.me.name} cannot read its job journal: {exc}") from None
        if kept is not None:
            raise JobError(404, f"job {job_id!r} lives at its home node {kept['home']}: ask "
                                f"{kept['home']}'s API ({node.peers[kept['home']].api}); {node.me.name} keeps its "
                                f"copy ({kept['checkpointed']} of {kept['inputs']} inputs checkpointed) and takes "
                                f"it over if {kept['home']} is declared dead")
        if home in node.peers and home != node.me.name:
            raise JobError(404, f"job {job_id!r} lives at its home node {home}: ask {home}'s API "
                                f"({node.peers[home].api})")
        raise JobError(404, f"no job {job_id!r} at {node.me.name}")

    def wait_param(request: Request) -> float:
        raw = request.query_params.get("wait")
        if raw is None:
            return 0.0
        try:
            return max(0.0, min(float(raw), MAX_WAIT_S))
        except ValueError:
            raise JobError(400, "'wait' must be a number of seconds") from None

    async def submit(request: Request) -> JSONResponse:
        try:
            body = await read_task(request, node.config.limits.max_body_bytes)
            job, new = await submit_job(node, body)
        except (JobError, SubmitError) as exc:
            return error(exc.status, str(exc), **({"Retry-After": "5"} if exc.status == 429 else {}))
        return JSONResponse(status_of(job) | {"url": f"/v1/jobs/{job.job_id}"}, status_code=202 if new else 200)

    async def listing(request: Request) -> JSONResponse:
        try:
            kept = node.job_copies.kept_list()
        except (sqlite3.Error, JobJournalError) as exc:
            return error(503, f"{node.me.name} cannot read its job journal: {exc}")
        return JSONResponse({"node": node.me.name, "jobs": [status_of(j) for j in node.jobs.recent()], "kept": kept})

    def status_of(job: Job) -> dict[str, Any]:
        return job.to_json() | {"home": node.me.name, "copy": node.job_copies.describe(job.job_id)}

    async def status(request: Request) -> JSONResponse:
        try:
            job = find(request.path_params["job_id"])
            seconds = wait_param(request)
        except JobError as exc:
            return error(exc.status, str(exc))
        if seconds:
            with trio.move_on_after(wait_left(job, seconds)):
                await job.done.wait()
        return JSONResponse(status_of(job))

    async def result(request: Request) -> JSONResponse:
        try:
            job = find(request.path_params["job_id"])
            seconds = wait_param(request)
            if seconds:
                with trio.move_on_after(wait_left(job, seconds)):
                    await job.done.wait()
            if job.status != "succeeded":
                raise JobError(409, f"job {job.job_id} is {job.status}"
                                    + (f": {job.error}" if job.error else f" ({job.plan.completed} of "
                                                                           f"{job.spec.n} inputs done)"))
            body = await trio.to_thread.run_sync(job.result_json)
        except JobError as exc:
            return error(exc.status, str(exc))
        return JSONResponse(body)

    async def cancel(request: Request) -> JSONResponse:
        try:
            job = find(request.path_params["job_id"])
        except JobError as exc:
            return error(exc.status, str(exc))
        node.jobs.cancel(job.job_id)
        return JSONResponse(status_of(job))

    return [
        Route("/v1/jobs", submit, methods=["POST"]), Route("/v1/jobs", listing, methods=["GET"]),
        Route("/v1/jobs/{job_id}", status, methods=["GET"]), Route("/v1/jobs/{job_id}", cancel, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/result", result, methods=["GET"]),
    ]
