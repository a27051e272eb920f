"""From a parsed body to the engine's :class:`MediaRequest`: the deployment's limits checked, the default steps
filled in, and for edits the uploaded image (and mask) prepared at the size the job runs at. Every route, the
studio API's and OpenAI's, builds its request here."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from engines.media_base import MediaCapabilities, MediaRequest, MediaTask
from gateway.media.common import Uploads, check_edit_steps, check_limits, form_model, require, steps_of
from gateway.media.models import Limits
from gateway.media.service import MediaJobs

SizeField = tuple[str, str]


def media_request(
    task: MediaTask, body: Any, size: tuple[int, int], steps: int, **extra: Any
) -> MediaRequest:
    """The fields every body has (prompt, negative prompt, guidance, seed), with the size and steps decided."""
    return MediaRequest(
        task=task,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=size[0],
        height=size[1],
        steps=steps,
        guidance_scale=body.guidance_scale,
        seed=body.seed,
        **extra,
    )


def checked_request(
    jobs: MediaJobs,
    caps: MediaCapabilities,
    task: MediaTask,
    body: Any,
    size: tuple[int, int],
    *,
    size_field: SizeField = ("width", "height"),
    frames: int | None = None,
    n: int | None = None,
    **extra: Any,
) -> MediaRequest:
    """A request within this deployment's limits (422 otherwise) for a task the engine does (400 otherwise)."""
    require(caps, task)
    limits = Limits.of(jobs.settings, caps)
    steps = steps_of(body.steps, limits)
    check_limits(
        limits, width=size[0], height=size[1], steps=steps, frames=frames, n=n, size_field=size_field
    )
    if frames is not None:
        extra["num_frames"] = frames
    return media_request(task, body, size, steps, **extra)


async def edit_request(
    request: Request,
    jobs: MediaJobs,
    caps: MediaCapabilities,
    model: type[Any],
    image_names: tuple[str, ...],
    *,
    transparent_is_edit: bool,
    size_field: SizeField = ("width", "height"),
) -> tuple[Any, MediaRequest]:
    """A multipart image edit: inpaint with a mask, image-to-image without. Returns the parsed fields too."""
    uploads = await Uploads.read(request, jobs.settings, image_names)
    body = form_model(uploads.fields, model)
    task: MediaTask = "inpaint" if uploads.mask is not None else "image-to-image"
    require(caps, task)
    size = await uploads.size(body.dimensions(default=None), Limits.of(jobs.settings, caps))
    media = checked_request(jobs, caps, task, body, size, size_field=size_field, n=getattr(body, "n", None))
    check_edit_steps(media.steps, body.strength)
    image, mask = await uploads.prepared(size, transparent_is_edit=transparent_is_edit)
    return body, MediaRequest(**{**media.__dict__, "strength": body.strength, "image": image, "mask": mask})


async def video_request(
    jobs: MediaJobs,
    caps: MediaCapabilities,
    body: Any,
    uploads: Uploads | None,
    frames: int,
    size_field: SizeField,
) -> MediaRequest:
    """A video: image-to-video when ``uploads`` holds an image (run at its size unless one is asked for),
    else text-to-video (512x512 unless asked)."""
    wanted = body.dimensions(default=None)
    if uploads is None or uploads.image is None:
        size = wanted or (512, 512)
        return checked_request(
            jobs, caps, "text-to-video", body, size, size_field=size_field, frames=frames, fps=body.fps
        )
    require(caps, "image-to-video")
    size = await uploads.size(wanted, Limits.of(jobs.settings, caps))
    media = checked_request(
        jobs, caps, "image-to-video", body, size, size_field=size_field, frames=frames, fps=body.fps
    )
    image, _ = await uploads.prepared(size, transparent_is_edit=False)
    return MediaRequest(**{**media.__dict__, "image": image})
