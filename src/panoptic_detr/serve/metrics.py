"""Prometheus metrics of one server (a registry of its own, so two apps in one process, as in
the tests, do not share counts): requests, latency, queue depth, batch sizes, errors by kind, cache."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float], cache_bytes: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("panoptic_detr_requests", "HTTP requests by route and status code",
                                ["route", "method", "code"], registry=r)
        self.latency = Histogram("panoptic_detr_request_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("panoptic_detr_batch_size", "Images per network run of /v1/segment",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.errors = Counter("panoptic_detr_errors", "Refused or failed requests by kind", ["kind"],
                              registry=r)
        Gauge("panoptic_detr_queue_depth", "Network jobs waiting or running",
              registry=r).set_function(queue_depth)
        Gauge("panoptic_detr_cache_bytes", "Bytes held by the re-threshold cache",
              registry=r).set_function(cache_bytes)
