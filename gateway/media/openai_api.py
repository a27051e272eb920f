"""OpenAI's image and video API shapes: ``POST /v1/images/generations``, ``POST /v1/images/edits``
(``b64_json`` or ``url``), and ``POST /v1/videos`` with ``GET /v1/videos/{id}`` and its ``/content``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engines.media_base import MediaRequest
from gateway.auth import scoped
from gateway.media.build import checked_request, edit_request, video_request
from gateway.media.common import (
    Uploads,
    answers,
    b64,
    engine_jobs,
    finished_images,
    form_model,
    is_multipart,
    json_body,
    json_off_loop,
)
from gateway.media.jobs_api import files_path, find_job
from gateway.media.models import OpenAIImages, OpenAIVideo
from gateway.media.service import MediaJobs, media_jobs

VIDEO_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed"}  # else failed
SIZE_FIELDS = ("size", "size")


async def _images_answer(
    request: Request, jobs: MediaJobs, media: MediaRequest, body: OpenAIImages
) -> Response:
    row = await jobs.submit("image", media, n=body.n, api="openai")
    done = await finished_images(jobs, row)
    if isinstance(done, Response):
        return done
    row, images = done
    created = int(row["created_at"])
    if body.response_format == "url":
        base = (jobs.settings.public_url or str(request.base_url)).rstrip("/")
        data = [{"url": base + files_path(row["id"], name)} for name in row["result"]["files"]]
        return JSONResponse({"created": created, "data": data})
    return await json_off_loop(
        lambda: {"created": created, "data": [{"b64_json": b64(png)} for png in images]}
    )


@answers
async def generations(request: Request) -> Response:
    jobs, caps = await engine_jobs(request)
    body = await json_body(request, OpenAIImages)
    size = body.dimensions()
    media = checked_request(jobs, caps, "text-to-image", body, size, size_field=SIZE_FIELDS, n=body.n)  # type: ignore[arg-type]
    return await _images_answer(request, jobs, media, body)


@answers
async def edits(request: Request) -> Response:
    """Multipart: ``image`` (or ``image[]``: the first), optional ``mask`` (transparent: edit here)."""
    jobs, caps = await engine_jobs(request)
    names = ("image", "image[]")
    body, media = await edit_request(
        request, jobs, caps, OpenAIImages, names, transparent_is_edit=True, size_field=SIZE_FIELDS
    )
    return await _images_answer(request, jobs, media, body)


def video_object(row: dict[str, Any]) -> dict[str, Any]:
    """A job as OpenAI's video object."""
    req = row["request"] or {}
    status = VIDEO_STATUS.get(row["status"], "failed")
    error = None
    if status == "failed":
        error = {"code": row["status"], "message": row["error"] or row["status"]}
    fps = req.get("fps") or 8
    return {
        "id": row["id"],
        "object": "video",
        "model": "voxgate-media",
        "status": status,
        "progress": int(round(float(row["progress"] or 0) * 100)),
        "created_at": int(row["created_at"]),
        "completed_at": int(row["finished_at"]) if row["finished_at"] else None,
        "expires_at": None,
        "prompt": req.get("prompt"),
        "size": f"{req.get('width')}x{req.get('height')}",
        "seconds": f"{(req.get('num_frames') or 0) / fps:g}",
        "remixed_from_video_id": None,
        "error": error,
    }


@answers
async def create_video(request: Request) -> Response:
    """JSON, or multipart with ``input_reference`` (an image: image-to-video)."""
    jobs, caps = await engine_jobs(request)
    uploads = None
    if is_multipart(request):
        uploads = await Uploads.read(request, jobs.settings, ("input_reference",), image_required=False)
        body = form_model(uploads.fields, OpenAIVideo)
    else:
        body = await json_body(request, OpenAIVideo)
    media = await video_request(jobs, caps, body, uploads, body.frames(), SIZE_FIELDS)
    row = await jobs.submit("video", media, api="openai")
    return JSONResponse(video_object(row), status_code=202, headers={"location": f"/v1/videos/{row['id']}"})


async def get_video(request: Request) -> Response:
    return JSONResponse(
        video_object(await find_job(media_jobs(request), request.path_params["video_id"], request))
    )


async def video_content(request: Request) -> Response:
    """The MP4 once the video is completed (404 before, as OpenAI answers)."""
    jobs = media_jobs(request)
    row = await find_job(jobs, request.path_params["video_id"], request)
    files = (row["result"] or {}).get("files") or []
    path = jobs.files.path(row["id"], "video.mp4")
    if "video.mp4" not in files or not path.is_file():
        return JSONResponse(
            {"detail": f"video {row['id']} has no content ({row['status']})"}, status_code=404
        )
    return FileResponse(
        path, media_type="video/mp4", filename=f"{row['id']}.mp4", content_disposition_type="inline"
    )


routes: list[BaseRoute] = [
    scoped(Route("/v1/images/generations", generations, methods=["POST"]), "media"),
    scoped(Route("/v1/images/edits", edits, methods=["POST"]), "media"),
    scoped(Route("/v1/videos", create_video, methods=["POST"]), "media"),
    scoped(Route("/v1/videos/{video_id}", get_video), "media"),
    scoped(Route("/v1/videos/{video_id}/content", video_content), "media"),
]
