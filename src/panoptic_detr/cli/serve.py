"""`panoptic-detr serve`: the REST API and the page at / (see panoptic_detr.serve)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from . import OptionError, whole_number
from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag

API_KEY_ENV = "PANOPTIC_DETR_API_KEY"


def _number(low: float, *, inclusive: bool):
    """argparse type: a finite number > low (>= low when inclusive), refused in one line."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= value if inclusive else low < value) or value == float("inf"):  # NaN fails too
            raise argparse.ArgumentTypeError(
                f"{text} is out of range (expected a number {'>=' if inclusive else '>'} {low:g})")
        return value

    return parse


_positive = _number(0, inclusive=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a REST API and a web page for panoptic segmentation",
        description="Serve the model over HTTP: the page at /, the API under /v1 (OpenAPI at /docs), "
        "/healthz, /readyz and /metrics. One network worker behind a bounded queue; the same "
        "inference settings and segments as predict. Needs the 'serve' extra "
        "(pip install 'panoptic-detr[serve]').",
    )
    add_weights_flag(p, default="demo")
    p.add_argument("--preset", default=None, help="architecture, when --weights is a file that does not say")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_settings_flags(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=whole_number(0), default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set)")
    p.add_argument("--max-upload-mb", type=_positive, default=20.0, help="largest upload in MB (20)")
    p.add_argument("--max-pixels", type=whole_number(1), default=40_000_000,
                   help="largest image, width x height (40000000)")
    p.add_argument("--queue-size", type=whole_number(0), default=8,
                   help="requests that may wait for the network; more get 503 + Retry-After (8)")
    p.add_argument("--timeout", type=_positive, default=60.0,
                   help="seconds a request may wait for and use the network; then 503 (60)")
    p.add_argument("--max-batch", type=whole_number(1), default=None,
                   help="segment requests waiting together run through the network as one batch, "
                        "results as predict --batch-size N gives them (default 4 on a GPU, 1 on a CPU)")
    p.add_argument("--batch-wait-ms", type=_number(0, inclusive=True), default=10.0,
                   help="how long to wait for more requests to fill a batch (10)")
    p.add_argument("--cache-mb", type=_positive, default=512.0,
                   help="memory for the network outputs kept for re-thresholding (512)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow calls from pages of ORIGIN (repeatable; default: no CORS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        print(f"error: serve needs the 'serve' extra ({e.name} is missing): "
              "pip install 'panoptic-detr[serve]'", file=sys.stderr)
        return 1
    from ..predictor import Predictor
    from ..serve import Limits, create_app

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise OptionError("--api-key is empty")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_queue=args.queue_size, timeout_s=args.timeout,
                    cache_bytes=int(args.cache_mb * 2**20), max_batch=args.max_batch,
                    batch_wait_ms=args.batch_wait_ms)
    predictor = Predictor(args.weights, preset=args.preset, device=args.device, **settings_kwargs(args))
    name = os.path.basename(os.fspath(args.weights))
    app = create_app(predictor, limits, api_key=api_key, cors_origins=tuple(args.cors_origin),
                     model_name=name)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this port "
              "can use the model", file=sys.stderr)
    print(f"serving {name} on http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops",
          file=sys.stderr)
    with _sigterm_is_a_stop() as stopped:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    if stopped:
        print("stopped (SIGTERM): the requests in flight were answered", file=sys.stderr)
    return 0


@contextmanager
def _sigterm_is_a_stop() -> Iterator[list[int]]:
    """SIGTERM as an ordinary stop: uvicorn finishes the requests in flight, then raises the
    signal again for the handler that was there before it; with this one the command then
    returns (exit 0) instead of dying of the signal. Yields the signals seen."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield seen
        return
    previous = signal.signal(signal.SIGTERM, lambda sig, _: seen.append(sig))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
