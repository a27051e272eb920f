"""Uploaded images and masks: read from a multipart form within limits, decoded safely, made ready for an engine.

The body's size is already capped before it is read (``gateway.http_guard``: ``media_max_upload_mb``). Here a
file is decoded with Pillow in a worker thread: only PNG, JPEG and WebP, the pixel count checked from the header
before any pixel is decoded (a small file can declare a huge image: a decompression bomb), and Pillow's own
bomb check turned into an error. What comes out is a PNG at the size the job will run at.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
MAX_UPLOAD_PIXELS = 40_000_000  # a 40-megapixel photo decodes; a declared 50000x50000 image does not
FILE_FIELDS = frozenset({"file", "image", "image[]", "mask", "input_reference"})


class BadImage(ValueError):
    """An upload that is not an image this server decodes (or one too large to decode)."""


def unprocessable(field: str, msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", field], "msg": msg, "type": "value_error"}])


async def read_form(request: Request) -> FormData:
    """The multipart form: two files at most (image and mask); a broken body is a 422."""
    try:
        return await request.form(max_files=2, max_fields=32, max_part_size=64 << 10)
    except HTTPException as exc:  # starlette's own multipart errors (too many parts, a broken body)
        raise HTTPException(422, f"the body is not a valid multipart form: {exc.detail}") from None


def text_fields(form: FormData) -> dict[str, Any]:
    """The form's text fields; a file where text belongs is a 422."""
    fields: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        if key in FILE_FIELDS:
            continue
        values = form.getlist(key)
        if any(isinstance(v, UploadFile) for v in values):
            raise unprocessable(key, "must be text, not a file")
        fields[key] = values[0] if len(values) == 1 else values
    return fields


async def file_bytes(
    form: FormData, names: tuple[str, ...], max_bytes: int, *, required: bool
) -> bytes | None:
    """The bytes of the first of ``names`` the form holds as a file (422: missing, not a file, too big)."""
    for name in names:
        value = form.get(name)
        if value is None:
            continue
        if not isinstance(value, UploadFile):
            raise unprocessable(name, "must be an uploaded file")
        if value.size is not None and value.size > max_bytes:
            raise unprocessable(name, f"is larger than {max_bytes} bytes (media_max_upload_mb)")
        data = await value.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise unprocessable(name, f"is larger than {max_bytes} bytes (media_max_upload_mb)")
        if not data:
            raise unprocessable(name, "is empty")
        return data
    if required:
        raise HTTPException(
            422, [{"loc": ["body", names[0]], "msg": "an image file is required", "type": "missing"}]
        )
    return None


def _open(data: bytes):  # type: ignore[no-untyped-def]
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"not a PNG, JPEG or WebP image ({type(exc).__name__})") from None
        if image.format not in ACCEPTED_FORMATS:
            raise BadImage(f"{image.format} images are not accepted: send PNG, JPEG or WebP")
        width, height = image.size
        if width * height > MAX_UPLOAD_PIXELS:
            raise BadImage(f"{width}x{height} is more than {MAX_UPLOAD_PIXELS} pixels")
        try:
            image.load()
        except (
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            raise BadImage(f"the image data is broken ({type(exc).__name__})") from None
    return image


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an uploaded image (decoding it fully, so a broken one fails here)."""
    return _open(data).size  # type: ignore[no-any-return]


def prepare_image(data: bytes, size: tuple[int, int]) -> bytes:
    """The upload as an RGB PNG of ``size`` (resized when it differs)."""
    from PIL import Image

    image = _open(data).convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return _png(image)


def prepare_mask(data: bytes, size: tuple[int, int], *, transparent_is_edit: bool) -> bytes:
    """A mask as a grey PNG of ``size``, white where the image is to be repainted.

    The studio API sends that already. OpenAI's edits send a picture whose fully transparent pixels mark the
    area to edit (``transparent_is_edit``); a mask without an alpha channel is read as grey either way.
    """
    from PIL import Image

    mask = _open(data)
    if transparent_is_edit and (mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        grey = alpha.point(lambda a: 255 if a == 0 else 0)
    else:
        grey = mask.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.NEAREST)
    return _png(grey)


def _png(image) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def run_decoding(fn, *args: Any, field: str = "file", **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    """Run a decoding step in a thread; a :class:`BadImage` is the 422 for ``field``."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except BadImage as exc:
        raise unprocessable(field, str(exc)) from None
