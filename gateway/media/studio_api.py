"""The studio services' API: ``POST /image/generate``, ``POST /image/edit`` (answered inline with base64 PNG,
as that API does), ``POST /video/generate`` and ``POST /video/image-to-video`` (202 with a job)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engines.media_base import MediaRequest
from gateway.auth import scoped
from gateway.media.build import checked_request, edit_request, video_request
from gateway.media.common import (
    Uploads,
    accepted,
    answers,
    b64,
    engine_jobs,
    finished_images,
    form_model,
    json_body,
    json_off_loop,
)
from gateway.media.models import MAX_PROMPT_CHARS, StudioImage, StudioVideo
from gateway.media.service import MediaJobs

RESOLUTION = ("resolution", "resolution")


class StudioImageToVideo(StudioVideo):
    """``POST /video/image-to-video``'s fields: the prompt is optional (some models take none)."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)


async def _image_answer(jobs: MediaJobs, media: MediaRequest) -> Response:
    row = await jobs.submit("image", media, api="studio")
    done = await finished_images(jobs, row)
    if isinstance(done, Response):
        return done
    row, images = done
    result = row["result"]
    return await json_off_loop(
        lambda: {
            "image": b64(images[0]),
            "seed": result["seed"],
            "width": result["width"],
            "height": result["height"],
            "job_id": row["id"],
        }
    )


@answers
async def image_generate(request: Request) -> Response:
    jobs, caps = await engine_jobs(request)
    body = await json_body(request, StudioImage)
    media = checked_request(jobs, caps, "text-to-image", body, body.dimensions())  # type: ignore[arg-type]
    return await _image_answer(jobs, media)


@answers
async def image_edit(request: Request) -> Response:
    """Multipart: ``file`` (the image), ``prompt``, optional ``mask`` (white: repaint) and the generate fields
    plus ``strength``; image-to-image without a mask, inpaint with one."""
    jobs, caps = await engine_jobs(request)
    _, media = await edit_request(
        request, jobs, caps, StudioImage, ("file", "image"), transparent_is_edit=False
    )
    return await _image_answer(jobs, media)


@answers
async def video_generate(request: Request) -> Response:
    jobs, caps = await engine_jobs(request)
    body = await json_body(request, StudioVideo)
    media = await video_request(jobs, caps, body, None, body.num_frames, RESOLUTION)
    return accepted(await jobs.submit("video", media, api="studio"))


@answers
async def video_image_to_video(request: Request) -> Response:
    """Multipart: ``file`` (the first frame), optional ``prompt``, ``resolution``, ``num_frames``, ``fps``..."""
    jobs, caps = await engine_jobs(request)
    uploads = await Uploads.read(request, jobs.settings, ("file", "image"))
    body = form_model(uploads.fields, StudioImageToVideo)
    media = await video_request(jobs, caps, body, uploads, body.num_frames, RESOLUTION)
    return accepted(await jobs.submit("video", media, api="studio"))


routes: list[BaseRoute] = [
    scoped(Route("/image/generate", image_generate, methods=["POST"]), "media"),
    scoped(Route("/image/edit", image_edit, methods=["POST"]), "media"),
    scoped(Route("/video/generate", video_generate, methods=["POST"]), "media"),
    scoped(Route("/video/image-to-video", video_image_to_video, methods=["POST"]), "media"),
]
