"""The contract between media jobs (image and video generation) and the engines that run them.

A media engine is a plain synchronous compute object like the voice engines (``engines.base``): it is called
from a job worker thread or a ``voxgate worker`` process, never on the event loop, and knows nothing about
HTTP, queues or storage. The job layer (``gateway.media``) validates a request, turns it into a
:class:`MediaRequest`, and stores the :class:`MediaResult` it gets back as files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

MediaTask = Literal["text-to-image", "image-to-image", "inpaint", "text-to-video", "image-to-video"]
MEDIA_TASKS: tuple[MediaTask, ...] = (
    "text-to-image",
    "image-to-image",
    "inpaint",
    "text-to-video",
    "image-to-video",
)


class MediaCancelled(Exception):
    """Raised inside an engine's run when the job was cancelled (checked between denoising steps)."""


class MediaEngineError(Exception):
    """The engine cannot do what was asked (a task it lacks, a model that failed); the job fails with this."""


@dataclass(frozen=True)
class MediaRequest:
    """One generation, already validated by the job layer (sizes are multiples the engine accepts)."""

    task: MediaTask
    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None  # None: the engine picks one and reports it in the result
    num_frames: int = 16  # video tasks only
    fps: int = 8  # video tasks only
    strength: float = 0.8  # image-to-image and inpaint: how far from the input image the result may go
    image: bytes | None = None  # PNG/JPEG/WebP bytes of the input image (image-to-image, inpaint, image-to-video)
    mask: bytes | None = None  # inpaint: white where the image is to be repainted


@dataclass
class MediaResult:
    """What a generation produced: PNG images, or one MP4 video, and the seed that reproduces it."""

    seed: int
    images: list[bytes] = field(default_factory=list)  # PNG files
    video: bytes | None = None  # an MP4 file
    frames: int = 0
    fps: int = 0
    media_type: str = "image/png"


# progress(fraction in [0, 1]); cancelled() is polled between steps and makes the engine raise MediaCancelled.
Progress = Callable[[float], None]
Cancelled = Callable[[], bool]


@dataclass(frozen=True)
class MediaCapabilities:
    """What a media engine can do, shown at ``GET /v1/media`` and checked before a job is queued."""

    tasks: frozenset[str]
    size_multiple: int = 8  # width and height must be multiples of this
    max_width: int = 1024
    max_height: int = 1024
    max_steps: int = 100
    max_frames: int = 64
    device: str = "cpu"
    concurrency: int = 1  # jobs it runs at once


@runtime_checkable
class MediaEngine(Protocol):
    """Generates images and videos; blocking, called from a worker thread or process."""

    @property
    def capabilities(self) -> MediaCapabilities: ...

    def generate(self, request: MediaRequest, progress: Progress, cancelled: Cancelled) -> MediaResult: ...

    def close(self) -> None: ...
