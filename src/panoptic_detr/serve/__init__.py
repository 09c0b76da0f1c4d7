"""`panoptic-detr serve`: a REST API and a web page around a `Predictor` (FastAPI + uvicorn,
the `serve` extra; imported only by that command).

- `app`: the routes, limits, API key, errors and metrics (`create_app`, `Limits`);
- `engine`: the network side: segment keeping `detect`'s outputs, re-threshold and explain
  from that cache (`Engine`, `ResultCache`);
- `worker`: the one network thread behind a bounded queue;
- `uploads`: request bodies within the byte limit, decoded as `predict` decodes files;
- `metrics`: Prometheus counters; `static/`: the page (plain HTML, CSS and JS, no CDN).
"""

from .app import Limits, create_app

__all__ = ["Limits", "create_app"]
