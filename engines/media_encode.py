"""Pictures in and out of the media engines: decoding uploads, PNG and MP4 (H.264 by PyAV) encoding.

Kept apart from the engines so the remote engine (no torch) and the job layer can use it too.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

from engines.media_base import MediaEngineError

__all__ = ["decode_image", "encode_mp4", "encode_png", "probe_mp4", "to_png"]

# Pillow refuses to open pictures larger than this (a decompression bomb is a small file of a huge picture).
MAX_PIXELS = 64 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image(data: bytes, mode: str = "RGB", size: tuple[int, int] | None = None) -> Image.Image:
    """An uploaded picture as a Pillow image in ``mode``, resized to ``size`` (width, height) when given."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise MediaEngineError(f"the picture is {image.width}x{image.height}: too many pixels")
            image = image.convert(mode)
    except MediaEngineError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaEngineError(f"not a picture Pillow can read: {exc}") from exc
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def encode_png(image: Image.Image) -> bytes:
    """A PNG file of the picture."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def to_png(data: bytes) -> bytes:
    """PNG bytes as they are; any other picture format (a remote service's JPEG or WebP) converted to PNG."""
    if data.startswith(_PNG_SIGNATURE):
        return data
    return encode_png(decode_image(data))


def _frame_array(frame: Image.Image | np.ndarray) -> np.ndarray:
    """One video frame as uint8 RGB (pipelines give Pillow pictures, or float arrays in [0, 1])."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return array


def _video_codec() -> str:
    # H.264 plays in every browser (the video studio's preview); MPEG-4 part 2 where an FFmpeg build lacks x264.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(frames: Sequence[Image.Image | np.ndarray], fps: int) -> bytes:
    """An MP4 (H.264, yuv420p) of the frames at ``fps``; every frame is written, so a reader counts them all."""
    if not frames:
        raise MediaEngineError("the pipeline produced no frames")
    arrays = [_frame_array(frame) for frame in frames]
    height, width = arrays[0].shape[:2]
    # yuv420p halves the chroma planes: odd sizes are cropped by one pixel rather than refused.
    even_h, even_w = height - height % 2, width - width % 2
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream(_video_codec(), rate=max(1, int(fps)))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        for array in arrays:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[:even_h, :even_w]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def probe_mp4(data: bytes) -> tuple[int, int]:
    """(frames, fps) of an MP4 file, by decoding it (a remote service's result says neither reliably)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            fps = round(float(stream.average_rate or stream.base_rate or 0))
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise MediaEngineError(f"the video is not a readable MP4: {exc}") from exc
    return frames, fps
