"""The jobs API: ``GET /v1/media`` (what the engine does), ``GET /v1/jobs`` (filtered), ``GET /v1/jobs/{id}``, ``DELETE /v1/jobs/{id}`` (cancel),
``GET /v1/jobs/{id}/events`` (Server-Sent Events of progress and the final state) and the result files."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.api_common import parse_query_int
from gateway.auth import principal_of, scoped
from gateway.keys.ownership import owner_filter, owns
from gateway.media.models import Limits
from gateway.media.service import POLL_S, MediaJobs, media_jobs
from storage.jobs import FINAL_STATUSES, STATUSES

KINDS = ("image", "video")
JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
FILE_NAME = re.compile(r"^(image-\d{1,3}\.png|video\.mp4)$")
MEDIA_TYPES = {".png": "image/png", ".mp4": "video/mp4"}
KEEPALIVE_S = 15.0
_PRIVATE_REQUEST_KEYS = ("queue", "owner")


def files_path(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/files/{name}"


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it; ``result_urls`` are paths on this server."""
    result = row.get("result") or None
    names = (result or {}).get("files", [])
    return {
        "id": row["id"],
        "object": "job",
        "kind": row["kind"],
        "task": row["task"],
        "status": row["status"],
        "progress": round(float(row["progress"] or 0.0), 4),
        "result_urls": [files_path(row["id"], name) for name in names],
        "result": result,
        "error": row["error"],
        "cancel_requested": bool(row["cancel_requested"]),
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "request": {k: v for k, v in (row["request"] or {}).items() if k not in _PRIVATE_REQUEST_KEYS},
    }


async def find_job(jobs: MediaJobs, job_id: str, conn: HTTPConnection | None = None) -> dict[str, Any]:
    """The job; 404 when there is none, or (``conn``) when it is another API key's."""
    row = await jobs.jobs.get(job_id) if JOB_ID.match(job_id) else None
    if row is not None and conn is not None and not owns(principal_of(conn), row.get("owner_key")):
        row = None
    if row is None:
        raise HTTPException(404, f"no job {job_id[:80]!r}")
    return row


async def list_jobs(request: Request) -> Response:
    jobs = media_jobs(request)
    status = request.query_params.get("status") or None
    kind = request.query_params.get("kind") or None
    if status is not None and status not in STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(STATUSES)}")
    if kind is not None and kind not in KINDS:
        raise HTTPException(422, f"kind must be one of {', '.join(KINDS)}")
    limit = parse_query_int(request.query_params.get("limit"), "limit", default=50, lo=1, hi=500)
    rows = await jobs.jobs.list(status=status, kind=kind, limit=limit, owner_key=owner_filter(request))
    return JSONResponse({"object": "list", "data": [job_view(r) for r in rows]})


async def get_job(request: Request) -> Response:
    return JSONResponse(job_view(await find_job(media_jobs(request), request.path_params["job_id"], request)))


async def cancel_job(request: Request) -> Response:
    """Cancel: a queued job ends at once, a running one at its engine's next step (``cancel_requested``
    until then); a job that already ended is a 409."""
    jobs = media_jobs(request)
    row = await find_job(jobs, request.path_params["job_id"], request)
    if row["status"] in FINAL_STATUSES:
        raise HTTPException(409, f"job {row['id']} already ended {row['status']}")
    row = await jobs.cancel(row["id"])
    assert row is not None
    return JSONResponse(job_view(row))


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(request: Request) -> Response:
    """The job now, then again at each change of status or progress, until it ends (the last event holds
    the final state; the stream then closes: an ``EventSource`` should be closed by its page there)."""
    jobs = media_jobs(request)
    job_id = (await find_job(jobs, request.path_params["job_id"], request))["id"]

    async def stream() -> AsyncIterator[str]:
        last: tuple[str, float] | None = None
        quiet_since = time.monotonic()
        while True:
            row = await jobs.jobs.get(job_id)
            if row is None:  # deleted by the retention sweep meanwhile
                return
            seen = (row["status"], row["progress"])
            if seen != last:
                last = seen
                quiet_since = time.monotonic()
                yield sse(job_view(row))
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"  # a comment: keeps proxies from closing an idle stream
            if row["status"] in FINAL_STATUSES:
                return
            await jobs.changes.wait(POLL_S)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def job_file(request: Request) -> Response:
    jobs = media_jobs(request)
    name = request.path_params["name"]
    row = await find_job(jobs, request.path_params["job_id"], request)
    if not FILE_NAME.match(name) or name not in ((row["result"] or {}).get("files") or []):
        raise HTTPException(404, f"job {row['id']} has no file {name[:80]!r}")
    path = jobs.files.path(row["id"], name)
    if not path.is_file():
        raise HTTPException(404, f"the file {name!r} of job {row['id']} is gone")
    return FileResponse(
        path, media_type=MEDIA_TYPES[path.suffix], filename=name, content_disposition_type="inline"
    )


async def media_info(request: Request) -> Response:
    """What this server's media engine does and the limits requests are held to (``tasks`` empty: none)."""
    jobs = media_jobs(request)
    settings = jobs.settings
    info: dict[str, Any] = {"engine": settings.media_engine, "queue": settings.media_queue, "tasks": []}
    if settings.media_engine != "none":
        caps = await jobs.capabilities()  # 503 while the embedded engine loads
        limits = Limits.of(settings, caps)
        info.update(tasks=sorted(caps.tasks), device=caps.device, **dataclasses.asdict(limits))
    return JSONResponse(info)


routes: list[BaseRoute] = [
    scoped(Route("/v1/media", media_info), "media"),
    scoped(Route("/v1/jobs", list_jobs), "media"),
    scoped(Route("/v1/jobs/{job_id}", get_job), "media"),
    scoped(Route("/v1/jobs/{job_id}", cancel_job, methods=["DELETE"]), "media"),
    scoped(Route("/v1/jobs/{job_id}/events", job_events), "media"),
    scoped(Route("/v1/jobs/{job_id}/files/{name}", job_file), "media"),
]
