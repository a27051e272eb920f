"""The ``media_*`` settings (env ``VOXGATE_MEDIA_*``): flat fields that :class:`gateway.settings.Settings`
takes in as a base class, so they stay out of that file while reading as ``settings.media_engine``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MediaSettings(BaseModel):
    """Image and video generation: the engine, its limits, the job queue and how long results stay."""

    media_engine: Literal["none", "diffusers", "remote"] = Field(
        "none",
        description="image and video generation engine: none (media routes answer 400), diffusers (the [media] "
        "extra; media_model_path), remote (a studio-API service at media_remote_url)",
    )
    media_model_path: str | None = Field(
        None,
        description="diffusers: the local folder of a saved pipeline (save_pretrained); never downloaded",
    )
    media_device: str = Field("cpu", description="diffusers: torch device (cpu, cuda, cuda:1)")
    media_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="diffusers: torch dtype of the pipeline's weights"
    )
    media_threads: int = Field(
        1, ge=0, le=256, description="diffusers: torch CPU threads (0: torch's default; see media-engines.md)"
    )
    media_remote_url: str | None = Field(
        None, description="remote: base URL of a service that speaks the studio API (/image, /video)"
    )
    media_remote_api_key: str | None = Field(None, description="remote: Bearer key sent to it (never logged)")
    media_remote_timeout_s: float = Field(
        600.0, gt=0, le=86400, description="remote: longest wait for one request or one remote job"
    )
    media_max_width: int = Field(
        1024, ge=8, le=8192, description="widest image or video a request may ask for"
    )
    media_max_height: int = Field(
        1024, ge=8, le=8192, description="tallest image or video a request may ask for"
    )
    media_max_steps: int = Field(
        100, ge=1, le=1000, description="most denoising steps one request may ask for"
    )
    media_max_frames: int = Field(64, ge=1, le=1024, description="most video frames one request may ask for")
    media_max_upload_mb: float = Field(
        20.0,
        gt=0,
        le=512,
        description="largest uploaded image (or mask) in MiB; a larger body is refused (413)",
    )
    media_max_images: int = Field(
        4, ge=1, le=16, description="most images one request may ask for (OpenAI's n)"
    )
    media_results_retention_hours: float = Field(
        24.0, gt=0, description="finished jobs, with their result files, are deleted after this many hours"
    )
    media_concurrency: int = Field(
        1, ge=1, le=64, description="jobs the media engine runs at once (in this gateway, or in each worker)"
    )
    media_max_waiting: int = Field(
        100,
        ge=1,
        le=100_000,
        description="jobs that may wait in the queue; past that, new ones are refused (429)",
    )
    media_queue: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: jobs run inside this gateway; redis: jobs go to a Redis stream that `voxgate worker` "
        "processes consume (they share database_url and data_dir with the gateway)",
    )
    media_redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for media_queue=redis")
    media_redis_queue: str = Field(
        "voxgate-media",
        min_length=1,
        max_length=128,
        description="name of the Redis stream the gateway and its workers share (one per deployment)",
    )
    media_redelivery_s: float = Field(
        600.0,
        ge=60,
        le=86400,
        description="media_queue=redis: a job whose worker died is handed to another worker after this long "
        "(when the next job arrives); longer than a job takes, or a slow job's message is reclaimed (harmless)",
    )
    media_wait_timeout_s: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="how long POST /image/* and /v1/images/* wait for their job; after that they answer 202 with "
        "the job to poll",
    )
