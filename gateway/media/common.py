"""What the studio and OpenAI routes share: reading a body or form into a model, checking it against this
deployment's limits, preparing uploads, and answering with a finished image job."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engines.media_base import MediaCapabilities, MediaTask
from gateway.api_common import parse_body, validation_detail
from gateway.media.jobs_api import job_view
from gateway.media.models import Limits, fit_size, limit_errors
from gateway.media.service import MediaJobs, media_jobs
from gateway.media.uploads import (
    file_bytes,
    image_size,
    prepare_image,
    prepare_mask,
    read_form,
    run_decoding,
    text_fields,
)
from storage.jobs import CANCELLED, SUCCEEDED

M = TypeVar("M", bound=BaseModel)
DEFAULT_STEPS = 25


class Answer(Exception):
    """A finished answer (a 422 body) raised out of the parsing helpers."""

    def __init__(self, response: Response) -> None:
        self.response = response


def answers(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn an :class:`Answer` raised while parsing into its response."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Answer as answer:
            return answer.response

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def engine_jobs(request: Request) -> tuple[MediaJobs, MediaCapabilities]:
    """This app's jobs and its engine's capabilities: 400 before anything is read when there is no engine."""
    jobs = media_jobs(request)
    return jobs, await jobs.capabilities()


def require(caps: MediaCapabilities, task: MediaTask) -> None:
    if task not in caps.tasks:
        raise HTTPException(
            400, f"the media engine cannot do {task} (it does: {', '.join(sorted(caps.tasks))})"
        )


async def json_body(request: Request, model: type[M]) -> M:
    parsed = await parse_body(request, model)
    if isinstance(parsed, Response):
        raise Answer(parsed)
    return parsed


def form_model(fields: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise Answer(validation_detail(exc)) from None


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "multipart/form-data"


def check_limits(limits: Limits, **values: Any) -> None:
    errors = limit_errors(limits, **values)
    if errors:
        raise Answer(JSONResponse({"detail": errors}, status_code=422))


class Uploads:
    """A multipart edit's form: its text fields and its image and mask bytes, checked and ready to prepare."""

    def __init__(self, fields: dict[str, Any], image: bytes | None, mask: bytes | None) -> None:
        self.fields = fields
        self.image = image
        self.mask = mask

    @classmethod
    async def read(
        cls, request: Request, settings: Any, image_names: tuple[str, ...], *, image_required: bool = True
    ) -> Uploads:
        form = await read_form(request)
        try:
            limit = int(settings.media_max_upload_mb * (1 << 20))
            image = await file_bytes(form, image_names, limit, required=image_required)
            mask = await file_bytes(form, ("mask",), limit, required=False)
            return cls(text_fields(form), image, mask)
        finally:
            await form.close()

    async def size(self, wanted: tuple[int, int] | None, limits: Limits) -> tuple[int, int]:
        """The size the job runs at: the one asked for, else the image's own brought within the limits."""
        assert self.image is not None
        own = await run_decoding(image_size, self.image, field="image")
        return wanted or fit_size(*own, limits)

    async def prepared(
        self, size: tuple[int, int], *, transparent_is_edit: bool
    ) -> tuple[bytes, bytes | None]:
        assert self.image is not None
        image = await run_decoding(prepare_image, self.image, size, field="image")
        mask = None
        if self.mask is not None:
            mask = await run_decoding(
                prepare_mask, self.mask, size, transparent_is_edit=transparent_is_edit, field="mask"
            )
        return image, mask


def steps_of(steps: int | None, limits: Limits) -> int:
    return steps if steps is not None else min(DEFAULT_STEPS, limits.max_steps)


def check_edit_steps(steps: int, strength: float) -> None:
    """An edit runs ``steps * strength`` denoising steps (diffusers' image-to-image): at least one."""
    if int(steps * strength) < 1:
        msg = f"steps x strength must make at least one step ({steps} x {strength})"
        raise Answer(
            JSONResponse(
                {"detail": [{"loc": ["body", "strength"], "msg": msg, "type": "value_error"}]},
                status_code=422,
            )
        )


def accepted(row: dict[str, Any]) -> JSONResponse:
    """202: the job was queued; poll its URL or follow its events."""
    view = job_view(row)
    return JSONResponse(view, status_code=202, headers={"location": f"/v1/jobs/{row['id']}"})


async def finished_images(
    jobs: MediaJobs, row: dict[str, Any]
) -> tuple[dict[str, Any], list[bytes]] | Response:
    """Wait for an image job (up to ``media_wait_timeout_s``): its row and PNGs, or the answer to give
    instead (202 still running, 409 cancelled, 500 failed with the engine's reason)."""
    row = await jobs.wait(row["id"], jobs.settings.media_wait_timeout_s) or row
    if row["status"] == SUCCEEDED:
        names = row["result"]["files"]
        paths = [jobs.files.path(row["id"], name) for name in names]
        return row, await asyncio.to_thread(lambda: [p.read_bytes() for p in paths])
    if row["status"] == CANCELLED:
        return JSONResponse({"detail": "the job was cancelled", "job_id": row["id"]}, status_code=409)
    if row["status"] in ("queued", "running"):
        return accepted(row)
    detail = f"image generation failed: {row['error']}"
    return JSONResponse({"detail": detail, "job_id": row["id"]}, status_code=500)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def json_off_loop(build: Callable[[], dict[str, Any]]) -> Response:
    """A JSON answer built and serialised in a thread: images as base64 run to megabytes, and encoding them
    on the event loop would hold every other request and call for tens of milliseconds."""
    body = await asyncio.to_thread(lambda: json.dumps(build(), separators=(",", ":")).encode())
    return Response(body, media_type="application/json")
