"""Image and video generation on another machine that speaks the studio API (a GPU box's voxgate, or the
studio's own image and video services), by URL.

Requests map one to one onto the studio routes: text-to-image is ``POST /image/generate`` (JSON), image-to-image
and inpaint are ``POST /image/edit`` (multipart: ``file``, ``mask`` for inpaint), text-to-video is
``POST /video/generate`` (JSON, ``resolution`` "WxH") and image-to-video ``POST /video/image-to-video``
(multipart). An answer holds the result inline (``image`` or ``video`` as base64), or is a job (202 with its
``id``): the job is then followed at ``GET /v1/jobs/{id}`` (its progress passed on, a local cancel sent as
``DELETE``) and its result fetched from the first of its ``result_urls``. Errors, the remote's ``detail``
included, become ``MediaEngineError``. No torch here: a gateway that forwards never loads a model.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

import httpx

from engines.media_base import (
    MEDIA_TASKS,
    Cancelled,
    MediaCancelled,
    MediaCapabilities,
    MediaEngineError,
    MediaRequest,
    MediaResult,
    Progress,
)
from engines.media_encode import probe_mp4, to_png
from engines.media_registry import MediaOptions
from engines.stt_remote import error_text, http_client

__all__ = ["RemoteMediaEngine"]

_POLL_S = (0.1, 1.0)  # a job is polled at the first interval, backing off to the second
_CONCURRENCY = 4  # requests in flight at once: the remote service queues its own work


class RemoteMediaEngine:
    """Forwards each generation to ``options.remote_url`` and waits for its result (blocking)."""

    def __init__(self, options: MediaOptions) -> None:
        if not options.remote_url:
            raise MediaEngineError("the remote media engine needs a URL: set VOXGATE_MEDIA_REMOTE_URL")
        self.base_url = options.remote_url.rstrip("/")
        self._api_key = options.remote_api_key
        self._timeout_s = options.remote_timeout_s
        self._client = http_client(self.base_url, self._api_key, options.remote_timeout_s, _CONCURRENCY)
        # What the remote model does is known only when it answers: every task is offered, and one it lacks
        # fails as a job with the remote's own words (its 400).
        self.capabilities = MediaCapabilities(
            tasks=frozenset(MEDIA_TASKS),
            max_width=options.max_width,
            max_height=options.max_height,
            max_steps=options.max_steps,
            max_frames=options.max_frames,
            device=f"remote {self.base_url}",
            concurrency=_CONCURRENCY,
        )

    def generate(self, request: MediaRequest, progress: Progress, cancelled: Cancelled) -> MediaResult:
        """Send the request to its studio route and wait for the result; MediaCancelled on a local cancel."""
        if cancelled():
            raise MediaCancelled()
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        answer = self._send(request, seed)
        if "image" not in answer and "video" not in answer:
            answer = self._follow(_job_id(answer), progress, cancelled)
        result = self._result(request, seed, answer)
        progress(1.0)
        return result

    def _send(self, request: MediaRequest, seed: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "prompt": request.prompt,
            "steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "seed": seed,
        }
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if request.task in ("text-to-image", "image-to-image", "inpaint"):
            fields.update(width=request.width, height=request.height)
        else:
            fields.update(resolution=f"{request.width}x{request.height}", num_frames=request.num_frames)
            fields["fps"] = request.fps
        if request.task == "text-to-image":
            return self._call("POST", "/image/generate", json=fields)
        if request.task == "text-to-video":
            return self._call("POST", "/video/generate", json=fields)
        if request.image is None:
            raise MediaEngineError(f"{request.task} needs an input image")
        files = {"file": ("image.png", request.image, "application/octet-stream")}
        if request.task == "inpaint":
            if request.mask is None:
                raise MediaEngineError("inpaint needs a mask (white where the picture is repainted)")
            files["mask"] = ("mask.png", request.mask, "application/octet-stream")
        if request.task in ("image-to-image", "inpaint"):
            fields["strength"] = request.strength
        route = "/video/image-to-video" if request.task == "image-to-video" else "/image/edit"
        data = {name: str(value) for name, value in fields.items()}
        return self._call("POST", route, data=data, files=files)

    def _follow(self, job_id: str, progress: Progress, cancelled: Cancelled) -> dict[str, Any]:
        """Poll the remote job to its end; a local cancel cancels it there too."""
        deadline = time.monotonic() + self._timeout_s
        interval = _POLL_S[0]
        while True:
            if cancelled():
                self._cancel(job_id)
                raise MediaCancelled()
            job = self._call("GET", f"/v1/jobs/{job_id}")
            status = job.get("status")
            if isinstance(job.get("progress"), int | float):
                progress(max(0.0, min(1.0, float(job["progress"]))))
            if status == "succeeded":
                return self._fetch_result(job)
            if status in ("failed", "cancelled"):
                raise MediaEngineError(
                    f"the remote job {job_id} {status}: {job.get('error') or 'no reason given'}"
                )
            if time.monotonic() > deadline:
                self._cancel(job_id)
                raise MediaEngineError(f"the remote job {job_id} did not finish in {self._timeout_s:g} s")
            time.sleep(interval)
            interval = min(_POLL_S[1], interval * 1.5)

    def _fetch_result(self, job: dict[str, Any]) -> dict[str, Any]:
        urls = job.get("result_urls") or []
        if not urls:
            raise MediaEngineError(f"the remote job {job.get('id')} succeeded without a result")
        response = self._request("GET", str(urls[0]))
        is_mp4 = (
            response.headers.get("content-type", "").startswith("video/") or response.content[4:8] == b"ftyp"
        )
        kind = "video" if is_mp4 else "image"
        return {**job, kind: response.content}

    def _cancel(self, job_id: str) -> None:
        try:
            self._client.delete(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            pass  # the job will end on its own there; the local one is cancelled either way

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise MediaEngineError(
                f"the media service at {self.base_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise MediaEngineError(
                f"the media service answered {response.status_code}: {self._reason(response)}"
            )
        return response

    def _reason(self, response: httpx.Response) -> str:
        """The remote's ``detail``; a validation list (422) as "field: message; ..."."""
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, list) and all(isinstance(item, dict) and "msg" in item for item in detail):
            parts = [
                f"{'.'.join(str(p) for p in item.get('loc', [])[-1:])}: {item['msg']}" for item in detail
            ]
            return "; ".join(parts)[:300]
        return error_text(response, self._api_key)

    def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, url, **kwargs)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise MediaEngineError(f"the media service's answer to {method} {url} is not a JSON object")
        return answer

    @staticmethod
    def _result(request: MediaRequest, seed: int, answer: dict[str, Any]) -> MediaResult:
        result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
        remote_seed = answer.get("seed", result.get("seed"))  # inline answers say it; a job says it in result
        if isinstance(remote_seed, int):
            seed = remote_seed
        if "video" in answer:
            video = _payload(answer["video"])
            frames, fps = probe_mp4(video)
            return MediaResult(seed=seed, video=video, frames=frames, fps=fps, media_type="video/mp4")
        return MediaResult(seed=seed, images=[to_png(_payload(answer["image"]))])

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _job_id(answer: dict[str, Any]) -> str:
    job_id = answer.get("id") or answer.get("job_id")
    if not job_id:
        raise MediaEngineError("the media service answered neither a result nor a job id")
    return str(job_id)


def _payload(value: Any) -> bytes:
    """A result's bytes: fetched already, or base64 text (with or without a ``data:`` URL's prefix)."""
    if isinstance(value, bytes):
        return value
    text = str(value)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaEngineError(f"the media service's result is not base64: {exc}") from exc
