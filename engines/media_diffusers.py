"""Image and video generation with Hugging Face diffusers, on a pipeline saved in a local folder.

The folder (``media_model_path``) is whatever ``DiffusionPipeline.save_pretrained`` wrote: nothing is fetched
from a hub (``local_files_only``). Its pipeline class says what it can do:

- a text-to-image pipeline (Stable Diffusion, SDXL, SD3, Flux, ...) also edits: image-to-image and inpaint
  pipelines are made from the same weights by ``AutoPipelineForImage2Image.from_pipe`` and
  ``AutoPipelineForInpainting.from_pipe`` (no second copy in memory), where diffusers has one for its family;
- a text-to-video pipeline (AnimateDiff, LTX, Wan, CogVideoX, ...) or an image-to-video one (Stable Video
  Diffusion, LTX, Wan image-to-video, ...) does that one task.

A run is seeded with a CPU ``torch.Generator`` (the same seed gives the same picture on any device), reports
progress and checks for cancellation after every denoising step (``callback_on_step_end``), and holds the
engine's lock: one generation at a time per engine.
"""

from __future__ import annotations

import gc
import inspect
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from diffusers.pipelines import auto_pipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from engines.media_base import (
    Cancelled,
    MediaCancelled,
    MediaCapabilities,
    MediaEngineError,
    MediaRequest,
    MediaResult,
    MediaTask,
    Progress,
)
from engines.media_encode import decode_image, encode_mp4, encode_png
from engines.media_registry import MediaOptions

__all__ = ["DiffusersMediaEngine", "pipeline_task"]

log = logging.getLogger("voxgate.engines")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_IMAGE_TASKS: tuple[MediaTask, ...] = ("text-to-image", "image-to-image", "inpaint")


def _mapped(mapping_name: str) -> set[str]:
    return {cls.__name__ for cls in getattr(auto_pipeline, mapping_name, {}).values()}


# Pipeline classes by task: diffusers' own auto-pipeline tables, plus the video pipelines those leave out.
_KNOWN: list[tuple[MediaTask, set[str]]] = [
    ("text-to-image", _mapped("AUTO_TEXT2IMAGE_PIPELINES_MAPPING")),
    (
        "image-to-video",
        _mapped("AUTO_IMAGE2VIDEO_PIPELINES_MAPPING")
        | {"StableVideoDiffusionPipeline", "I2VGenXLPipeline", "CogVideoXImageToVideoPipeline"},
    ),
    (
        "text-to-video",
        _mapped("AUTO_TEXT2VIDEO_PIPELINES_MAPPING")
        | {
            "AnimateDiffPipeline",
            "AnimateDiffSDXLPipeline",
            "TextToVideoSDPipeline",
            "CogVideoXPipeline",
            "HunyuanVideoPipeline",
            "MochiPipeline",
        },
    ),
    ("image-to-image", _mapped("AUTO_IMAGE2IMAGE_PIPELINES_MAPPING")),
    ("inpaint", _mapped("AUTO_INPAINT_PIPELINES_MAPPING")),
]


def pipeline_task(pipe: Any) -> MediaTask | None:
    """The task a loaded pipeline does, from its class (None: not an image or video generator we know)."""
    name = type(pipe).__name__
    for task, names in _KNOWN:
        if name in names:
            return task
    if "ImageToVideo" in name:
        return "image-to-video"
    return None


def _derived_pipelines(pipe: Any, task: MediaTask) -> dict[MediaTask, Any]:
    """The loaded pipeline under its task, plus the edit pipelines diffusers can make from an image one."""
    pipes: dict[MediaTask, Any] = {task: pipe}
    if task not in _IMAGE_TASKS:
        return pipes
    for other, auto in (
        ("image-to-image", AutoPipelineForImage2Image),
        ("inpaint", AutoPipelineForInpainting),
    ):
        if other in pipes:
            continue
        try:
            derived = auto.from_pipe(pipe)
        except Exception as exc:  # diffusers has no such pipeline for this family: the task is not offered
            log.info("media: no %s pipeline for %s (%s)", other, type(pipe).__name__, exc)
            continue
        derived.set_progress_bar_config(disable=True)
        pipes[other] = derived
    return pipes


def _size_multiple(pipe: Any, video: bool) -> int:
    """What width and height must be multiples of: the VAE's scale, and for video UNets each downsampling too
    (their temporal blocks do not resize odd latents the way the image UNet does)."""
    scale = int(getattr(pipe, "vae_scale_factor_spatial", 0) or getattr(pipe, "vae_scale_factor", 8) or 8)
    multiple = max(8, scale)
    unet = getattr(pipe, "unet", None)
    if video and unet is not None:
        multiple *= 2 ** (len(unet.config.block_out_channels) - 1)
    return multiple


class DiffusersMediaEngine:
    """A diffusers pipeline loaded from ``options.model_path`` on ``options.device`` in ``options.dtype``."""

    def __init__(self, options: MediaOptions) -> None:
        if not options.model_path:
            raise MediaEngineError("the diffusers media engine needs a model: set VOXGATE_MEDIA_MODEL_PATH")
        path = Path(options.model_path).expanduser()
        if not (path / "model_index.json").is_file():
            raise MediaEngineError(f"no saved diffusers pipeline at {path} (model_index.json is missing)")
        self._device = options.device
        if options.threads:
            torch.set_num_threads(options.threads)  # process-wide: torch has one CPU pool
        diffusers_logging.disable_progress_bar()  # loading bars are terminal noise in a server's log
        transformers_logging.disable_progress_bar()
        try:
            pipe = DiffusionPipeline.from_pretrained(
                str(path), dtype=_DTYPES[options.dtype], local_files_only=True
            ).to(options.device)
        except Exception as exc:  # a broken folder, an unknown device: the server says why and does not start
            raise MediaEngineError(f"cannot load the pipeline at {path}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        task = pipeline_task(pipe)
        if task is None:
            raise MediaEngineError(
                f"{type(pipe).__name__} at {path} is not an image or video pipeline voxgate runs"
            )
        self._pipes = _derived_pipelines(pipe, task)
        self._lock = threading.Lock()
        video = task in ("text-to-video", "image-to-video")
        self.capabilities = MediaCapabilities(
            tasks=frozenset(self._pipes),
            size_multiple=_size_multiple(pipe, video),
            max_width=options.max_width,
            max_height=options.max_height,
            max_steps=options.max_steps,
            max_frames=options.max_frames,
            device=options.device,
            concurrency=1,
        )
        log.info(
            "media: %s from %s on %s: %s", type(pipe).__name__, path, options.device, sorted(self._pipes)
        )

    def generate(self, request: MediaRequest, progress: Progress, cancelled: Cancelled) -> MediaResult:
        """Run one generation (blocking); raises MediaCancelled between steps, MediaEngineError on failure."""
        pipe = self._pipes.get(request.task)
        if pipe is None:
            offered = ", ".join(sorted(self._pipes))
            raise MediaEngineError(f"this model does not do {request.task} (it does: {offered})")
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        kwargs = self._arguments(pipe, request, seed, progress, cancelled)
        with self._lock:
            if cancelled():
                raise MediaCancelled()
            try:
                output = pipe(**kwargs)
            except (MediaCancelled, MediaEngineError):
                raise
            except Exception as exc:  # the model failed (out of memory, a shape it refuses): the job fails
                raise MediaEngineError(f"{type(pipe).__name__} failed: {exc}") from exc
        result = self._result(request, seed, output, kwargs)
        progress(1.0)
        return result

    def _arguments(
        self, pipe: Any, request: MediaRequest, seed: int, progress: Progress, cancelled: Cancelled
    ) -> dict[str, Any]:
        """The call's keyword arguments, kept to those this pipeline's ``__call__`` takes."""
        size = (request.width, request.height)
        wanted: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "max_guidance_scale": request.guidance_scale,  # Stable Video Diffusion ramps up to this
            "generator": torch.Generator(device="cpu").manual_seed(seed),
            "callback_on_step_end": _StepCallback(request.steps, progress, cancelled),
            "output_type": "pil",
        }
        if request.negative_prompt:
            wanted["negative_prompt"] = request.negative_prompt
        needs_image = request.task in ("image-to-image", "inpaint", "image-to-video")
        if needs_image and request.image is None:
            raise MediaEngineError(f"{request.task} needs an input image")
        if request.task == "inpaint" and request.mask is None:
            raise MediaEngineError("inpaint needs a mask (white where the picture is repainted)")
        if request.image is not None and needs_image:
            wanted["image"] = decode_image(request.image, "RGB", size)
        if request.task in ("image-to-image", "inpaint"):
            wanted["strength"] = request.strength
        if request.mask is not None and request.task == "inpaint":
            wanted["mask_image"] = decode_image(request.mask, "L", size)
        if request.task in ("text-to-video", "image-to-video"):
            wanted["num_frames"] = request.num_frames
            wanted["fps"] = request.fps
        accepted = inspect.signature(pipe.__call__).parameters
        return {name: value for name, value in wanted.items() if name in accepted}

    @staticmethod
    def _result(request: MediaRequest, seed: int, output: Any, kwargs: dict[str, Any]) -> MediaResult:
        if request.task in ("text-to-video", "image-to-video"):
            frames = list(output.frames[0])
            video = encode_mp4(frames, request.fps)
            return MediaResult(
                seed=seed, video=video, frames=len(frames), fps=request.fps, media_type="video/mp4"
            )
        images = list(output.images)
        if request.task == "inpaint":
            # The pipeline repaints through the VAE, which also blurs what the mask keeps: outside the mask the
            # caller gets their own pixels back, and the edit blends in along a soft mask's grey edge.
            original, mask = kwargs["image"], kwargs["mask_image"]
            images = [Image.composite(image.convert("RGB"), original, mask) for image in images]
        return MediaResult(seed=seed, images=[encode_png(image) for image in images])

    def close(self) -> None:
        """Drop the pipelines (and the GPU's cached blocks) so a reload does not hold two models."""
        self._pipes = {}
        gc.collect()
        if self._device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()


class _StepCallback:
    """diffusers' ``callback_on_step_end``: progress after each step, and the cancellation check."""

    def __init__(self, steps: int, progress: Progress, cancelled: Cancelled) -> None:
        self._steps = steps
        self._progress = progress
        self._cancelled = cancelled

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # image-to-image runs strength * steps of them: the pipeline knows how many it really runs.
        total = int(getattr(pipe, "_num_timesteps", 0) or self._steps)
        self._progress(min(1.0, (step + 1) / max(1, total)))
        if self._cancelled():
            raise MediaCancelled()  # leaves the denoising loop: nothing after this step runs
        return tensors
