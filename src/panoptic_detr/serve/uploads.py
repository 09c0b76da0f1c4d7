"""An uploaded image from an HTTP request: the body read within the byte limit (multipart
field `image`, or the raw body), then decoded by `data.images.decode_image`, the decoder of
`predict`, with its decompression-bomb guard, in the accepted formats only.

Nothing here touches the file system with a name the client chose: the bytes stay in memory
(Starlette spools a multipart file over 1 MB to an anonymous temporary file).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.images import ImageError, decode_image

FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
"""Pillow formats the server decodes; anything else is 415."""
MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may hold beyond the image (boundaries, headers, the threshold)."""


class UploadError(Exception):
    """A request whose image cannot be used: an HTTP status and a one-line `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class BodyLimit:
    """ASGI middleware: no request body over `max_bytes`, whatever the route (JSON ones too),
    answered with a JSON 413: at once for a Content-Length over it, else once that much has
    arrived. The body is read here (at most `max_bytes`) and handed on, except on the routes
    in `streamed`, which read and bound their bodies themselves (`read_upload`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.streamed = app, max_bytes, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"the request body is over the limit of {self.max_bytes} bytes"},
                                 413)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await too_large(scope, receive, send)
        if scope["path"] in self.streamed:
            return await self.app(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """(the image's bytes, the multipart `threshold` field or None) of a request."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    cap = max_bytes + (MULTIPART_SLACK if multipart else 0)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise UploadError(413, f"the upload is {int(length)} bytes; the limit is {max_bytes}")
    if not multipart:
        data = b"".join([chunk async for chunk in _limited(request.stream(), cap, max_bytes)])
        if not data:
            raise UploadError(422, "no image: send it as the multipart field 'image' or as the request body")
        return data, None
    parser = MultiPartParser(request.headers, _limited(request.stream(), cap, max_bytes), max_files=1,
                             max_fields=4, max_part_size=1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UploadError(422, f"malformed multipart body: {e.message}") from None
    try:
        image, threshold = form.get("image"), form.get("threshold")
        if not isinstance(image, UploadFile):
            raise UploadError(422, "the multipart body has no file field 'image'")
        data = await image.read(max_bytes + 1)
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise UploadError(413, f"the image is over the limit of {max_bytes} bytes")
    if not data:
        raise UploadError(422, "the multipart field 'image' is empty")
    return data, threshold if isinstance(threshold, str) else None


async def _limited(stream: AsyncIterator[bytes], cap: int, max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > cap:
            raise UploadError(413, f"the upload is over the limit of {max_bytes} bytes")
        yield chunk


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an uploaded file: 415 for a format not in `FORMATS` (or not an
    image), 413 over `max_pixels`, 422 for a damaged file; read as `predict` reads the file."""
    try:  # the header only: format and size before any pixel is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise UploadError(413, f"too many pixels (the limit is {max_pixels})") from None
    except Exception:  # any decoder's complaint about a header is a file it cannot read
        raise UploadError(415, f"not an image in an accepted format ({', '.join(FORMATS)})") from None
    if w * h > max_pixels:
        raise UploadError(413, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
    try:
        return decode_image(data, "the image", max_pixels=max_pixels, formats=FORMATS)
    except ImageError as e:
        raise UploadError(422, str(e)) from None
    except Exception as e:  # a decoder failing on hostile data in a way it does not document
        raise UploadError(422, f"the image cannot be decoded ({type(e).__name__})") from None
