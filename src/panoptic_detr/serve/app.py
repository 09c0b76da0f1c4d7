"""The HTTP API and the page, built around a `Predictor` (see the package docstring).

Every error is JSON with a one-line `detail`; 5xx is kept for bugs: a full queue or a request
that waited past its timeout is 503 with Retry-After, everything the client can fix is 4xx.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.panoptic_png import id_to_rgb
from ..model.weights import preset_name
from ..predictor import Predictor
from ..runner import segments_json
from ..structures import PanopticResult
from ..viz import palette
from .engine import Engine, Entry, NoCounterpart, ResultCache
from .metrics import Metrics
from .uploads import FORMATS, MULTIPART_SLACK, BodyLimit, UploadError, decode_upload, read_upload
from .worker import JobTimeout, QueueFull, Worker

STATIC = Path(__file__).parent / "static"
REQUEST_ID = r"^[0-9a-f]{32}$"
log = logging.getLogger("panoptic_detr.serve")


@dataclass(frozen=True)
class Limits:
    """What one request and the server may take."""

    max_upload_bytes: int = 20 * 2**20
    """Largest image file accepted (413 above)."""
    max_pixels: int = 40_000_000
    """Largest width x height decoded (413 above; a decompression bomb stops at its header)."""
    max_queue: int = 8
    """Requests that may wait for the network while one runs (503 + Retry-After beyond)."""
    timeout_s: float = 60.0
    """Seconds a request may wait for and use the network (503 after)."""
    cache_bytes: int = 512 * 2**20
    """Memory for the network outputs kept for re-thresholding and explaining (least recently
    used dropped first; demo model: ~1 MB an image, DETR-R50 at 800 px: ~150 MB)."""
    max_batch: int | None = None
    """Segment requests that may run through the network as one batch (those waiting when it
    is free, with the same threshold), each result then as `predict --batch-size N` gives it
    on the device; None: 4 on a GPU, 1 (one at a time) on a CPU."""
    batch_wait_ms: float = 10.0
    """How long the worker waits for more requests to fill a batch (with max_batch > 1)."""


@dataclass
class Done:
    """What a network job answers: the result, its threshold and its COCO panoptic PNG."""

    result: PanopticResult
    threshold: float
    png: bytes


class Error(BaseModel):
    detail: str


class ThresholdRequest(BaseModel):
    threshold: float = Field(ge=0, lt=1, description="class confidence a query needs, in [0, 1)")


Credentials = Annotated[HTTPAuthorizationCredentials | None,
                       Depends(HTTPBearer(auto_error=False, description="the server's --api-key"))]
ThresholdQuery = Annotated[float | None, Query(ge=0, lt=1, description=(
    "class confidence a query needs (default: the server's)"))]
RequestId = Annotated[str, PathParam(pattern=REQUEST_ID, description="a segment call's request_id")]
SegmentId = Annotated[int, PathParam(ge=1, lt=2**24, description="a segment id of the result")]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text} for code, text in (
        (401, "missing or wrong API key"), (404, "unknown or expired request id, or no such segment"),
        (413, "upload or image too large"), (415, "not an image in an accepted format"),
        (422, "malformed request"), (503, "queue full or timed out; retry after Retry-After seconds"))
}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "threshold": {"type": "number"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    **{f"image/{f.lower()}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS},
}}}
ERROR_KINDS = {401: "unauthorized", 404: "not_found", 405: "method", 413: "too_large",
               415: "unsupported_format", 422: "invalid", 503: "unavailable"}


def create_app(predictor: Predictor, limits: Limits | None = None, *, api_key: str | None = None,
               cors_origins: tuple[str, ...] = (), model_name: str | None = None) -> FastAPI:
    """The server's ASGI app. api_key: every /v1 call then needs `Authorization: Bearer KEY`;
    cors_origins: origins allowed to call from other pages (none: no CORS headers)."""
    limits = limits or Limits()
    if limits.max_batch is None:
        limits = dataclasses.replace(limits, max_batch=1 if predictor.device.type == "cpu" else 4)
    engine, cache = Engine(predictor), ResultCache(limits.cache_bytes)
    worker = Worker(limits.max_queue, limits.timeout_s, limits.max_batch, limits.batch_wait_ms / 1000)
    metrics = Metrics(lambda: worker.depth, lambda: cache.nbytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.close()  # uvicorn has let the open requests finish; the queue is empty

    app = FastAPI(title="panoptic-detr", version=__version__, lifespan=lifespan,
                  description="Panoptic segmentation with DETR: upload an image, get its segments.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + MULTIPART_SLACK,
                       streamed=("/v1/segment",))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept"])

    async def authorize(credentials: Credentials) -> None:
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):  # type: ignore[union-attr]
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)] if api_key else [], responses=ERRORS)

    _observe(app, metrics)
    _error_responses(app, worker, limits)
    _page_and_probes(app, worker, metrics)

    # ---- the API ----------------------------------------------------------------------------

    config = getattr(predictor.pretrained, "config", None)
    model_info = {
        # a name, not the server's paths: "demo (/home/...)" -> "demo", "/srv/w/r50.pth" -> "r50.pth"
        "weights": model_name or Path(predictor.pretrained.source.split(" (", 1)[0]).name,
        "preset": preset_name(config) if config is not None else None,
        "runtime": predictor.settings.runtime, "device": str(predictor.device),
        "settings": dataclasses.asdict(predictor.settings),
        "categories": predictor.categories.to_json(),
        "limits": {**dataclasses.asdict(limits), "formats": list(FORMATS)},
    }

    @v1.get("/model", summary="The model, its categories and settings, and the server's limits")
    async def model() -> dict[str, Any]:
        return model_info

    def respond(request: Request, rid: str, done: Done) -> Response:
        headers = {"X-Request-Id": rid}
        if _wants_png(request):
            return Response(done.png, media_type="image/png", headers=headers)
        r = done.result
        pal = palette(r, predictor.categories)
        body = {"request_id": rid, "width": r.size[1], "height": r.size[0], "threshold": done.threshold,
                "segments_info": segments_json(r, predictor.categories),
                "colors": {str(k): list(v) for k, v in pal.items()},
                "panoptic_png": base64.b64encode(done.png).decode()}
        return JSONResponse(body, headers=headers)

    def segment_batch(uploads: list[tuple[bytes, float]]) -> list[tuple[Entry, Done] | Exception]:
        """The worker's batch of segment requests (all of one threshold: it is the batch key)."""
        out: list[tuple[Entry, Done] | Exception | None] = [None] * len(uploads)
        images: dict[int, np.ndarray] = {}
        for i, (data, _) in enumerate(uploads):
            try:
                images[i] = decode_upload(data, limits.max_pixels)
            except UploadError as e:  # this request's own 4xx; the others run
                out[i] = e
        if images:
            metrics.batch_size.observe(len(images))
            entries = engine.segment_batch(list(images.values()), uploads[0][1])
            for i, entry in zip(images, entries, strict=True):
                out[i] = entry, Done(entry.result, entry.threshold, _panoptic_png(entry.result.id_map))
        return out  # type: ignore[return-value]  # every slot filled

    @v1.post("/segment", summary="Segment an image (multipart field 'image', or the raw body)",
             openapi_extra=UPLOAD_BODY, responses={200: {"content": {"image/png": {}}, "description": (
                 "JSON, or the COCO panoptic PNG with Accept: image/png")}})
    async def segment(request: Request, threshold: ThresholdQuery = None) -> Response:
        if worker.full:  # refuse before reading the upload
            raise QueueFull
        data, field = await read_upload(request, limits.max_upload_bytes)
        if threshold is None and field is not None:
            threshold = _form_threshold(field)
        if threshold is None:
            threshold = predictor.threshold
        entry, done = await worker.run_batched(segment_batch, (data, threshold), key=threshold)
        rid = secrets.token_hex(16)
        cache.put(rid, entry)
        return respond(request, rid, done)

    def entry_of(request_id: str) -> Entry:
        entry = cache.get(request_id)
        if entry is None:
            raise HTTPException(404, f"no cached result for request {request_id} (unknown, or dropped "
                                     "from the cache: send the image again)")
        return entry

    def threshold_job(entry: Entry, threshold: float) -> Done:
        # the answer is made here: another call may change the entry once this job is done
        result = engine.rethreshold(entry, threshold)
        return Done(result, threshold, _panoptic_png(result.id_map))

    @v1.post("/segment/{request_id}/threshold",
             summary="The same image at another threshold, from the cached network outputs")
    async def rethreshold(request: Request, body: ThresholdRequest, request_id: RequestId) -> Response:
        entry = entry_of(request_id)
        done = await worker.run(threshold_job, entry, body.threshold)
        cache.put(request_id, entry)  # its size may have grown (new masks)
        return respond(request, request_id, done)

    def explain_job(entry: Entry, segment_id: int) -> dict[str, Any] | None:
        found = engine.explain(entry, segment_id)
        if found is None:
            return None
        found["heads"] = [{"head": h["head"], "mass": h["mass"], "png": _png_base64(h["picture"])}
                          for h in found["heads"]]
        found["mask_logits_png"] = _png_base64(found.pop("mask_logits"))
        return found

    @v1.get("/segment/{request_id}/explain/{segment_id}",
            summary="A segment's attention maps per head and mask logits, as PNG pictures")
    async def explain(request_id: RequestId, segment_id: SegmentId) -> dict[str, Any]:
        if predictor.settings.runtime != "torch":  # explain reads the torch model's attention
            raise HTTPException(409, f"explanations need the torch runtime (this server runs "
                                     f"{predictor.settings.runtime}): serve with --runtime torch")
        entry = entry_of(request_id)
        try:
            found = await worker.run(explain_job, entry, segment_id)
        except NoCounterpart as e:
            raise HTTPException(404, str(e)) from None
        cache.put(request_id, entry)
        if found is None:
            raise HTTPException(404, f"request {request_id} has no segment {segment_id} at threshold "
                                     f"{entry.threshold:g}")
        return {"request_id": request_id, "segment_id": segment_id, **found}

    app.include_router(v1)
    app.state.worker, app.state.cache, app.state.engine = worker, cache, engine
    return app


def _page_and_probes(app: FastAPI, worker: Worker, metrics: Metrics) -> None:
    """The page at /, its files, /healthz, /readyz, /metrics."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and requests are taken",
             responses={503: {"model": Error, "description": "shutting down"}})
    async def readyz() -> JSONResponse:
        if worker.closing:
            return JSONResponse({"detail": "shutting down"}, 503)
        return JSONResponse({"ready": True, "queue_depth": worker.depth})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _observe(app: FastAPI, metrics: Metrics) -> None:
    """Count and time every request; security headers."""

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", None)  # the template: no ids as labels
        route = route or ("/static" if request.url.path.startswith("/static/") else "unmatched")
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        if response.status_code >= 400:
            metrics.errors.labels(ERROR_KINDS.get(response.status_code, str(response.status_code))).inc()
        if route == "/":
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; object-src 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def _error_responses(app: FastAPI, worker: Worker, limits: Limits) -> None:
    """Every error as JSON with a one-line `detail`."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "malformed request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first['msg']}" if where else first["msg"]}, 422)

    @app.exception_handler(UploadError)
    async def bad_upload(_: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, e.status)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, e: QueueFull) -> JSONResponse:
        why = "shutting down" if worker.closing else f"busy: {worker.depth} requests wait for the network"
        return JSONResponse({"detail": f"{why}; retry later"}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(JobTimeout)
    async def timed_out(_: Request, e: JobTimeout) -> JSONResponse:
        return JSONResponse({"detail": f"the network did not answer within {limits.timeout_s:g} s; "
                                       "retry later"}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:  # never expected
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(e).__name__})"}, 500)


def _form_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UploadError(422, f"threshold: {text[:40]!r} is not a number") from None
    if not 0 <= value < 1:  # NaN fails too
        raise UploadError(422, f"threshold: {value} is out of range (from 0 up to, not including, 1)")
    return value


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "image/png" in accept and "application/json" not in accept


def _panoptic_png(id_map: Any) -> bytes:
    """The COCO panoptic PNG of an id map (id = R + 256 G + 256^2 B), as `predict` writes it."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(id_to_rgb(id_map))).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _png_base64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
