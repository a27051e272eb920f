"""A small studio-API service for the remote media engine's tests: the studio routes in front of real engines.

It speaks the shapes the remote engine forwards to (``/image/generate``, ``/image/edit``, ``/video/generate``,
``/video/image-to-video``, ``/v1/jobs/{id}``) the way the studio's own services and a voxgate with media jobs
do: images answer inline as base64, videos answer 202 with a job that is polled, fetched and cancelled. Work
runs on the diffusers engines it is given, so what comes back can be compared with a local run. It records
each request's method and path, for tests that check what the remote engine sent.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engines.media_base import MediaCancelled, MediaEngine, MediaEngineError, MediaRequest

_ENDED = ("succeeded", "failed", "cancelled")


class StudioStub:
    """The studio routes on 127.0.0.1 (a free port), served by uvicorn in a thread."""

    def __init__(self, image_engine: MediaEngine, video_engine: MediaEngine) -> None:
        self.images = image_engine
        self.videos = video_engine
        self.requests: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        app = Starlette(
            routes=[
                Route("/image/generate", self._image_generate, methods=["POST"]),
                Route("/image/edit", self._image_edit, methods=["POST"]),
                Route("/video/generate", self._video_generate, methods=["POST"]),
                Route("/video/image-to-video", self._image_to_video, methods=["POST"]),
                Route("/v1/jobs/{id}", self._job, methods=["GET", "DELETE"]),
                Route("/v1/jobs/{id}/files/{name}", self._file, methods=["GET"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the studio stub did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        for job in self.jobs.values():
            job["cancel"] = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def wait_for_end(self, job_id: str, timeout_s: float) -> str:
        """The job's final status, once its run has ended."""
        deadline = time.monotonic() + timeout_s
        while self.jobs[job_id]["status"] not in _ENDED and time.monotonic() < deadline:
            time.sleep(0.02)
        return str(self.jobs[job_id]["status"])

    # --- routes -------------------------------------------------------------------------------------------

    def _seen(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url.path}")

    async def _image_generate(self, request: Request) -> Response:
        self._seen(request)
        body = await request.json()
        if int(body.get("steps") or 0) > 50:  # a validation error in the shape voxgate (and FastAPI) give
            detail = [{"loc": ["body", "steps"], "msg": "at most 50 steps", "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await self._image(MediaRequest(task="text-to-image", **_request_fields(body)))

    async def _image_edit(self, request: Request) -> Response:
        self._seen(request)
        form = await request.form()
        mask = form.get("mask")
        fields = _request_fields(dict(form))
        image = await form["file"].read()  # type: ignore[union-attr]
        task = "inpaint" if mask is not None else "image-to-image"
        mask_bytes = await mask.read() if mask is not None else None  # type: ignore[union-attr]
        return await self._image(MediaRequest(task=task, image=image, mask=mask_bytes, **fields))

    async def _image(self, media: MediaRequest) -> Response:
        try:
            result = await run_in_threadpool(self.images.generate, media, lambda _: None, lambda: False)
        except MediaEngineError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        image = base64.b64encode(result.images[0]).decode()
        return JSONResponse(
            {"image": image, "seed": result.seed, "width": media.width, "height": media.height}
        )

    async def _video_generate(self, request: Request) -> Response:
        self._seen(request)
        return self._video_job(MediaRequest(task="text-to-video", **_request_fields(await request.json())))

    async def _image_to_video(self, request: Request) -> Response:
        self._seen(request)
        form = await request.form()
        image = await form["file"].read()  # type: ignore[union-attr]
        return self._video_job(
            MediaRequest(task="image-to-video", image=image, **_request_fields(dict(form)))
        )

    def _video_job(self, media: MediaRequest) -> Response:
        if media.task not in self.videos.capabilities.tasks:
            return JSONResponse({"detail": f"this model does not do {media.task}"}, status_code=400)
        job_id = f"job-{len(self.jobs) + 1}"
        job: dict[str, Any] = {"id": job_id, "kind": "video", "status": "queued", "progress": 0.0}
        job.update(result_urls=[], error=None, cancel=False)
        self.jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, media), daemon=True).start()
        return JSONResponse(_public(job), status_code=202)

    def _run(self, job: dict[str, Any], media: MediaRequest) -> None:
        job["status"] = "running"
        try:
            result = self.videos.generate(media, lambda p: job.update(progress=p), lambda: job["cancel"])
        except MediaCancelled:
            job["status"] = "cancelled"
        except MediaEngineError as exc:
            job.update(status="failed", error=str(exc))
        else:
            job.update(
                video=result.video, seed=result.seed, result_urls=[f"/v1/jobs/{job['id']}/files/video.mp4"]
            )
            job["status"] = "succeeded"

    async def _job(self, request: Request) -> Response:
        self._seen(request)
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        if request.method == "DELETE":
            job["cancel"] = True
        return JSONResponse(_public(job))

    async def _file(self, request: Request) -> Response:
        self._seen(request)
        job = self.jobs.get(request.path_params["id"])
        if job is None or "video" not in job:
            return JSONResponse({"detail": "no such file"}, status_code=404)
        return Response(job["video"], media_type="video/mp4")


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if key not in ("video", "cancel")}


def _request_fields(body: dict[str, Any]) -> dict[str, Any]:
    """MediaRequest fields from a JSON body or form (form values are text)."""
    fields: dict[str, Any] = {"prompt": str(body.get("prompt", ""))}
    for name in ("width", "height", "steps", "seed", "num_frames", "fps"):
        if body.get(name) is not None:
            fields[name] = int(body[name])
    for name in ("guidance_scale", "strength"):
        if body.get(name) is not None:
            fields[name] = float(body[name])
    if body.get("negative_prompt"):
        fields["negative_prompt"] = str(body["negative_prompt"])
    if body.get("resolution"):
        width, _, height = str(body["resolution"]).partition("x")
        fields.update(width=int(width), height=int(height))
    return fields
