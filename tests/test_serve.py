"""`panoptic-detr serve` through an ASGI test client with the demo model: every endpoint and
every error code, the API key, segments equal to `Predictor`'s, re-thresholding equal to a
fresh run, the bounded queue and the timeout, and a schemathesis run with no 5xx."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from panoptic_detr.cli import main  # noqa: E402
from panoptic_detr.data.panoptic_png import rgb_to_id  # noqa: E402
from panoptic_detr.predictor import Predictor  # noqa: E402
from panoptic_detr.runner import segments_json  # noqa: E402
from panoptic_detr.serve import Limits, create_app  # noqa: E402
from panoptic_detr.serve.worker import JobTimeout  # noqa: E402
from panoptic_detr.viz import palette  # noqa: E402

SCENES = sorted((Path(__file__).resolve().parents[1] / "src/panoptic_detr/assets/demo/scenes").glob("*.jpg"))
KEY = "s3cret-key"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor("demo")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, Limits(max_upload_bytes=200_000, max_pixels=1_000_000))) as c:
        yield c


def _png_ids(data: bytes) -> np.ndarray:
    return rgb_to_id(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).astype(np.int64)


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _check_result(body: dict, expected, predictor: Predictor) -> None:
    assert body["segments_info"] == segments_json(expected, predictor.categories)
    assert (body["height"], body["width"]) == expected.size
    assert np.array_equal(_png_ids(base64.b64decode(body["panoptic_png"])), expected.id_map.numpy())


# ---- segments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scene", SCENES[:2], ids=lambda p: p.stem)
def test_segments_equal_predict(client, predictor, scene):
    expected = predictor.predict(scene)
    assert len(expected.segments_info) > 3
    multipart = client.post("/v1/segment", files={"image": (scene.name, scene.read_bytes(), "image/jpeg")})
    raw = client.post("/v1/segment", content=scene.read_bytes(), headers={"Content-Type": "image/jpeg"})
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        _check_result(r.json(), expected, predictor)
        assert r.json()["threshold"] == predictor.threshold
        assert r.headers["X-Request-Id"] == r.json()["request_id"]
    ids = {multipart.json()["request_id"], raw.json()["request_id"]}
    assert len(ids) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    colors = multipart.json()["colors"]  # the overlays' colours: each thing instance its own
    assert colors == {str(k): list(v) for k, v in palette(expected, predictor.categories).items()}
    assert len({tuple(c) for c in colors.values()}) == len(expected.segments_info)


def test_accept_png_and_threshold_field(client, predictor):
    scene = SCENES[1]  # its segments change with the threshold (9 at the demo's 0.3, 7 at 0.7)
    other = Predictor("demo", threshold=0.7).predict(scene)
    assert len(other.segments_info) != len(predictor.predict(scene).segments_info)
    r = client.post("/v1/segment?threshold=0.7", content=scene.read_bytes(), headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(_png_ids(r.content), other.id_map.numpy())
    form = client.post("/v1/segment", files={"image": ("a.jpg", scene.read_bytes())},
                       data={"threshold": "0.7"})
    _check_result(form.json(), other, predictor)


def test_rethreshold_equals_a_fresh_run(client, predictor):
    scene = SCENES[1]
    first = client.post("/v1/segment", content=scene.read_bytes()).json()
    rid = first["request_id"]
    counts = set()
    for t in (0.9, 0.2, 0.05, 0.7, 0.5):  # up and down: new masks computed, cached ones reused
        r = client.post(f"/v1/segment/{rid}/threshold", json={"threshold": t})
        assert r.status_code == 200, r.text
        assert r.json()["request_id"] == rid and r.json()["threshold"] == t
        _check_result(r.json(), Predictor("demo", threshold=t).predict(scene), predictor)
        counts.add(len(r.json()["segments_info"]))
    assert len(counts) >= 3  # the thresholds matter for this scene
    png = client.post(f"/v1/segment/{rid}/threshold", json={"threshold": 0.3},
                      headers={"Accept": "image/png"})
    fresh = Predictor("demo", threshold=0.3).predict(scene)
    assert np.array_equal(_png_ids(png.content), fresh.id_map.numpy())


def test_explain_a_segment(client, predictor):
    scene = SCENES[1]  # a higher threshold gives it fewer segments
    body = client.post("/v1/segment", content=scene.read_bytes()).json()
    rid, seg = body["request_id"], body["segments_info"][0]
    r = client.get(f"/v1/segment/{rid}/explain/{seg['id']}")
    assert r.status_code == 200, r.text
    e = r.json()
    assert (e["segment_id"], e["category_id"], e["name"]) == (seg["id"], seg["category_id"], seg["name"])
    assert len(e["heads"]) == predictor.model.config.mask_heads
    assert 0.99 < sum(h["mass"] for h in e["heads"]) < 1.01  # the softmax is joint over heads
    for png in [h["png"] for h in e["heads"]] + [e["mask_logits_png"]]:
        im = Image.open(io.BytesIO(base64.b64decode(png)))
        assert im.format == "PNG" and np.asarray(im).std() > 1
    missing = max(s["id"] for s in body["segments_info"]) + 1
    assert client.get(f"/v1/segment/{rid}/explain/{missing}").status_code == 404
    # after a re-threshold, the explanation is of the new segments
    high = client.post(f"/v1/segment/{rid}/threshold", json={"threshold": 0.9}).json()
    before = {s["id"]: s["category_id"] for s in body["segments_info"]}
    after = {s["id"]: s["category_id"] for s in high["segments_info"]}
    changed = [i for i in after if before.get(i) != after[i]]
    assert changed  # the case this test is about: an id whose segment the re-threshold changed
    r = client.get(f"/v1/segment/{rid}/explain/{changed[0]}")
    assert r.status_code == 200 and r.json()["category_id"] == after[changed[0]]


def test_uploads_decode_as_load_image(tmp_path):
    # every awkward file of the zoo: the same pixels as predict's reader, or a 4xx naming why
    from image_zoo import write_image_zoo
    from panoptic_detr.data.images import ImageError, load_image
    from panoptic_detr.serve.uploads import UploadError, decode_upload

    for name, expected in write_image_zoo(tmp_path).items():
        data = (tmp_path / name).read_bytes()
        try:
            want = load_image(tmp_path / name)
        except ImageError:
            want = None
        try:
            got = decode_upload(data, max_pixels=10**6)
        except UploadError as e:
            assert want is None, name  # the zoo holds JPEG and PNG files only
            assert 400 <= e.status < 500 and e.detail, name
            continue
        assert want is not None and np.array_equal(got, want), name
        assert got.shape[:2] == expected, name


# ---- the other endpoints ----------------------------------------------------------------------

def test_model_health_ready_metrics_page(client, predictor):
    m = client.get("/v1/model").json()
    assert m["runtime"] == "torch" and m["device"] == "cpu" and m["weights"] == "demo"  # no server paths
    assert m["settings"]["threshold"] == predictor.threshold and m["settings"]["size"] == predictor.size
    assert m["categories"] == predictor.categories.to_json()
    assert m["limits"]["max_upload_bytes"] == 200_000 and "JPEG" in m["limits"]["formats"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    client.post("/v1/segment", content=b"not an image")
    text = client.get("/metrics").text
    assert 'panoptic_detr_requests_total{code="200",method="GET",route="/v1/model"}' in text
    assert 'panoptic_detr_errors_total{kind="unsupported_format"}' in text
    assert "panoptic_detr_queue_depth 0.0" in text and "panoptic_detr_request_seconds_bucket" in text
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]


# ---- errors -----------------------------------------------------------------------------------

def _big_png(side: int) -> bytes:
    return _encode(np.zeros((side, side, 3), np.uint8), "PNG")


def _claiming(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (with a valid checksum) claims another size: a decompression bomb's
    first bytes."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


@pytest.mark.parametrize("name, send, code", [
    ("bytes (Content-Length)", dict(content=b"\xff\xd8" + b"0" * 200_000), 413),
    ("bytes (multipart)", dict(files={"image": ("a.jpg", b"\xff\xd8" + b"0" * 200_000)}), 413),
    ("pixels", dict(content=_big_png(1100)), 413),
    ("bomb header", dict(content=_claiming(_big_png(20), 60000, 60000)), 413),
    ("pixels header", dict(content=_claiming(_big_png(20), 2000, 1000)), 413),
    ("text", dict(content=b"hello, world"), 415),
    ("gif", dict(content=_encode(np.zeros((8, 8, 3), np.uint8), "GIF")), 415),
    ("tiff", dict(content=_encode(np.zeros((8, 8, 3), np.uint8), "TIFF")), 415),
    ("truncated jpeg", dict(content=SCENES[0].read_bytes()[:3000]), 422),
    ("empty body", dict(content=b""), 422),
    ("multipart without image", dict(files={"other": ("a.jpg", b"x")}), 422),
    ("threshold 1", dict(content=b"x", params={"threshold": "1"}), 422),
    ("threshold text", dict(content=b"x", params={"threshold": "abc"}), 422),
    ("form threshold", dict(files={"image": ("a.jpg", SCENES[0].read_bytes())}, data={"threshold": "nan"}),
     422),
])
def test_segment_errors(client, name, send, code):
    r = client.post("/v1/segment", **send)
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail


def test_other_errors(client):
    rid = client.post("/v1/segment", content=SCENES[0].read_bytes()).json()["request_id"]
    cases = [
        (client.post(f"/v1/segment/{'0' * 32}/threshold", json={"threshold": 0.5}), 404),
        (client.get(f"/v1/segment/{'0' * 32}/explain/1"), 404),
        (client.post("/v1/segment/../../etc/passwd/threshold", json={"threshold": 0.5}), 404),
        (client.post("/v1/segment/not-an-id/threshold", json={"threshold": 0.5}), 422),
        (client.post(f"/v1/segment/{rid}/threshold", json={"threshold": 1.5}), 422),
        (client.post(f"/v1/segment/{rid}/threshold", content=b"{",
                     headers={"Content-Type": "application/json"}), 422),
        (client.get(f"/v1/segment/{rid}/explain/0"), 422),
        (client.post(f"/v1/segment/{rid}/threshold", content=b" " * 300_000,  # any body is bounded
                     headers={"Content-Type": "application/json"}), 413),
        (client.post(f"/v1/segment/{rid}/threshold", content=iter([b" " * 100_000] * 3),  # chunked
                     headers={"Content-Type": "application/json"}), 413),
        (client.post("/v1/segment", content=iter([b"\xff\xd8"] + [b"0" * 100_000] * 3)), 413),
        (client.get("/no/such/page"), 404),
        (client.get("/v1/segment"), 405),
    ]
    for r, code in cases:
        assert r.status_code == code, (r.request.url, r.text)
        assert isinstance(r.json()["detail"], str)


def test_api_key(predictor, monkeypatch):
    with TestClient(create_app(predictor, api_key=KEY)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            for r in (c.get("/v1/model", headers=headers),
                      c.post("/v1/segment", content=b"x", headers=headers)):
                assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
                assert "API key" in r.json()["detail"]
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/v1/model", headers=ok).status_code == 200
        assert c.post("/v1/segment", content=SCENES[3].read_bytes(), headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # not /v1
    # the command reads the key from the environment and binds 127.0.0.1 by default
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("PANOPTIC_DETR_API_KEY", KEY)
    assert main(["serve", "--weights", "demo", "--port", "8123", "--threshold", "0.3"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    with TestClient(seen["app"]) as c:
        assert c.get("/v1/model").status_code == 401
        m = c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert m["settings"]["threshold"] == 0.3 and m["weights"] == "demo"


# ---- the queue --------------------------------------------------------------------------------

def _blocker(release: threading.Event, started: threading.Event):
    def job():
        started.set()
        release.wait(10)
    return job


def test_queue_full_and_timeout(predictor):
    app = create_app(predictor, Limits(max_queue=1, timeout_s=0.5))
    worker = app.state.worker
    body = SCENES[3].read_bytes()

    async def scenario():
        release, started = threading.Event(), threading.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            busy = asyncio.create_task(worker.run(_blocker(release, started)))  # runs
            while not started.is_set():
                await asyncio.sleep(0.01)
            waiting = asyncio.create_task(c.post("/v1/segment", content=body))  # waits in the queue
            while worker.depth < 2:
                await asyncio.sleep(0.01)
            full = await c.post("/v1/segment", content=body)
            assert full.status_code == 503 and full.headers["Retry-After"] == "1"
            assert "busy" in full.json()["detail"]
            t0 = time.perf_counter()
            late = await waiting  # still queued after the timeout: 503, and it never runs
            assert late.status_code == 503 and "within 0.5 s" in late.json()["detail"]
            assert time.perf_counter() - t0 < 2 and len(app.state.cache) == 0
            release.set()
            with pytest.raises(JobTimeout):  # the blocker ran past the timeout too
                await busy
            while worker.depth:
                await asyncio.sleep(0.01)
            ok = await c.post("/v1/segment", content=body)
            assert ok.status_code == 200 and len(app.state.cache) == 1
            text = (await c.get("/metrics")).text
            assert 'panoptic_detr_errors_total{kind="unavailable"} 2.0' in text

    asyncio.run(scenario())
    worker.close()


def test_close_finishes_the_queued_jobs():
    # graceful shutdown: jobs already queued run to the end, new ones are refused
    from panoptic_detr.serve.worker import QueueFull, Worker

    worker = Worker(max_queue=4, timeout_s=10)

    def slow(i: int) -> int:
        time.sleep(0.05)
        return i

    async def scenario():
        jobs = [asyncio.create_task(worker.run(slow, i)) for i in range(4)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(asyncio.to_thread(worker.close))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await worker.run(slow, 9)
        assert await asyncio.gather(*jobs) == [0, 1, 2, 3]
        await closing
        assert worker.depth == 0

    asyncio.run(scenario())


def test_sigterm_lets_requests_in_flight_finish(tmp_path):
    # the real command under uvicorn: SIGTERM while requests run or wait for the network, each
    # of them still answered 200 with predict's segments, and the process exits 0
    import os
    import signal
    import socket
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "panoptic_detr", "serve", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a loaded machine can take minutes to import torch
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        image = tmp_path / "big.jpg"  # larger than the scenes: its decoding keeps the worker busy longer
        Image.open(SCENES[2]).resize((1024, 768)).save(image, quality=90)
        body = image.read_bytes()
        with ThreadPoolExecutor(4) as pool:  # (uvicorn gives them 30 s after the signal)
            sent = [pool.submit(httpx.post, f"{url}/v1/segment", content=body, timeout=120) for _ in range(4)]
            while httpx.get(f"{url}/readyz", timeout=5).json()["queue_depth"] < 2:  # some wait
                assert not all(f.done() for f in sent), "the requests ended before the signal"
            server.send_signal(signal.SIGTERM)
            answers = [f.result() for f in sent]
        assert server.wait(120) == 0, (tmp_path / "serve.log").read_text()
        assert "stopped (SIGTERM)" in (tmp_path / "serve.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    predictor = Predictor("demo")
    expected = segments_json(predictor.predict(image), predictor.categories)
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["segments_info"] == expected


def test_not_ready_while_closing(predictor):
    with TestClient(create_app(predictor)) as c:
        assert c.get("/readyz").status_code == 200
        c.app.state.worker.close()
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == "shutting down"
        refused = c.post("/v1/segment", content=SCENES[3].read_bytes())
        assert refused.status_code == 503 and "Retry-After" in refused.headers


def test_cache_is_bounded(predictor):
    with TestClient(create_app(predictor, Limits(cache_bytes=2_500_000))) as c:
        ids = [c.post("/v1/segment", content=s.read_bytes()).json()["request_id"] for s in SCENES]
        cache = c.app.state.cache
        assert 0 < len(cache) < len(SCENES) and cache.nbytes <= 2_500_000
        assert c.post(f"/v1/segment/{ids[0]}/threshold", json={"threshold": 0.5}).status_code == 404
        assert c.post(f"/v1/segment/{ids[-1]}/threshold", json={"threshold": 0.5}).status_code == 200


# ---- batching ---------------------------------------------------------------------------------

def _odd_sizes() -> list[np.ndarray]:
    """Four scenes of three shapes: in one batch the network pads them to a common size."""
    scenes = [np.asarray(Image.open(s).convert("RGB")) for s in SCENES[:4]]
    return [scenes[0], np.ascontiguousarray(scenes[1][:, :192]), np.ascontiguousarray(scenes[2][:160]),
            scenes[3]]


@pytest.mark.parametrize("together", [True, None], ids=["padded-batch", "cpu-default"])
def test_waiting_requests_run_as_one_batch(together):
    # requests that wait while the network is busy run as one batch: each answer is that of
    # `predict --batch-size 4` on the four images (True: one padded tensor, as on a GPU; None:
    # the CPU's way, each image alone, so a single image's answer), re-thresholding from the
    # batch's cached outputs equals a fresh batch at that threshold; a bad upload in the batch
    # is its own 415, and a request at another threshold runs in a batch of its own
    predictor = Predictor("demo", batched_network=together)
    images = _odd_sizes()
    bodies = [_encode(im, "PNG") for im in images]
    app = create_app(predictor, Limits(max_batch=8, batch_wait_ms=20))
    worker = app.state.worker

    async def scenario():
        release, started = threading.Event(), threading.Event()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            busy = asyncio.create_task(worker.run(_blocker(release, started)))
            while not started.is_set():
                await asyncio.sleep(0.01)
            sends = [c.post("/v1/segment", content=b) for b in bodies]
            sends += [c.post("/v1/segment", content=b"not an image"),
                      c.post("/v1/segment?threshold=0.2", content=bodies[1])]
            tasks = [asyncio.create_task(send) for send in sends]
            while worker.depth < 1 + len(tasks):
                await asyncio.sleep(0.01)
            release.set()
            await busy
            answers = await asyncio.gather(*tasks)
            # explain runs the image alone: a segment of a padded batch is matched to that run's
            explained = [(s, await c.get(f"/v1/segment/{a.json()['request_id']}/explain/{s['id']}"))
                         for a in answers[:4] for s in a.json()["segments_info"][:3]]
            rethresholded = {t: [await c.post(f"/v1/segment/{a.json()['request_id']}/threshold",
                                              json={"threshold": t}) for a in answers[:4]]
                             for t in (0.05, 0.9, 0.3)}
            return answers, explained, rethresholded, (await c.get("/metrics")).text

    answers, explained, rethresholded, metrics = asyncio.run(scenario())
    for s, r in explained:  # no 500, the same class, or a 404 saying why
        if r.status_code == 404:
            assert together and "has no segment of its class when the image runs alone" in r.text
            continue
        assert r.status_code == 200, r.text
        assert r.json()["category_id"] == s["category_id"] and len(r.json()["heads"]) > 0
    assert sum(r.status_code == 200 for _, r in explained) >= len(explained) // 2
    worker.close()
    expected = Predictor("demo", batched_network=together, batch_size=4).predict_batch(images)
    if together:  # padding to the batch's size changes the answers: the comparison means something
        alone = [predictor.predict(im) for im in images]
        assert any(not torch.equal(e.id_map, a.id_map) for e, a in zip(expected, alone, strict=True))
    for r, e in zip(answers[:4], expected, strict=True):
        assert r.status_code == 200, r.text
        _check_result(r.json(), e, predictor)
    assert answers[4].status_code == 415 and "\n" not in answers[4].json()["detail"]
    _check_result(answers[5].json(), Predictor("demo", threshold=0.2).predict(images[1]), predictor)
    # one batch of the 4 decoded images, one of 1 (the other threshold)
    assert "panoptic_detr_batch_size_count 2.0" in metrics and "panoptic_detr_batch_size_sum 5.0" in metrics
    assert 'panoptic_detr_batch_size_bucket{le="3.0"} 1.0' in metrics
    for t, replies in rethresholded.items():
        fresh = Predictor("demo", batched_network=together, batch_size=4, threshold=t).predict_batch(images)
        for r, e in zip(replies, fresh, strict=True):
            assert r.status_code == 200, r.text
            _check_result(r.json(), e, predictor)


def test_batching_settings(predictor, monkeypatch):
    # one at a time on a CPU unless asked; the command's flags reach the app
    with TestClient(create_app(predictor)) as c:
        limits = c.get("/v1/model").json()["limits"]
        assert limits["max_batch"] == 1 and c.app.state.worker.max_batch == 1
    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--max-batch", "3", "--batch-wait-ms", "2.5"]) == 0
    worker = seen["app"].state.worker
    assert (worker.max_batch, worker.batch_wait_s) == (3, 0.0025)
    for bad in (["--max-batch", "0"], ["--batch-wait-ms", "-1"], ["--batch-wait-ms", "nan"]):
        with pytest.raises(SystemExit):
            main(["serve", *bad])


def test_worker_batches_only_equal_keys():
    # the worker's own rules: same function and key, at most max_batch, cancelled jobs left out
    from panoptic_detr.serve.worker import Worker

    worker = Worker(max_queue=16, timeout_s=10, max_batch=3, batch_wait_s=0.01)
    batches = []

    def double(items: list[int]) -> list[int | Exception]:
        batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else 2 * i for i in items]

    async def scenario():
        release, started = threading.Event(), threading.Event()
        busy = asyncio.create_task(worker.run(_blocker(release, started)))
        while not started.is_set():
            await asyncio.sleep(0.01)
        jobs = [asyncio.create_task(worker.run_batched(double, i, key=i % 3 == 0)) for i in range(8)]
        while worker.depth < 9:
            await asyncio.sleep(0.01)
        jobs[4].cancel()  # still waiting: never runs
        await asyncio.sleep(0.01)
        release.set()
        await busy
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(scenario())
    worker.close()
    assert batches == [[0, 3, 6], [1, 2, 5], [7]]  # first come first, key by key, 3 at most
    assert [r if isinstance(r, int) else type(r).__name__ for r in results] == [
        0, "ValueError", 4, "ValueError", "CancelledError", "ValueError", 12, "ValueError"]
    assert worker.depth == 0


# ---- schemathesis -----------------------------------------------------------------------------

def test_no_server_errors_over_the_openapi_schema(predictor):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    app = create_app(predictor, Limits(max_upload_bytes=50_000, max_pixels=100_000, timeout_s=20))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []

    def run(operation):
        @settings(max_examples=12, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy())
        def check(case):
            response = case.call()
            seen.append((operation.path, response.status_code))
            case.validate_response(response, checks=[not_a_server_error])

        check()

    for op in schema.get_all_operations():
        run(op.ok())
    paths = {p for p, _ in seen}
    assert {"/v1/segment", "/v1/model", "/healthz"} <= paths
    assert all(code < 500 for _, code in seen)
    # schemathesis makes small valid images for image/* bodies, and broken requests
    assert ("/v1/segment", 200) in seen and any(code == 422 for _, code in seen)


def test_torch_untouched_by_building_the_parser():
    # the command's module imports no fastapi or torch until it runs (checked in a fresh process)
    import subprocess
    import sys

    code = ("import sys; from panoptic_detr.cli import build_parser; build_parser(); "
            "print('fastapi' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_engine_equal_under_torch_threads(predictor):
    # the worker thread gives the same answer as the caller's thread (torch state is per process)
    from panoptic_detr.serve.engine import Engine

    image = np.asarray(Image.open(SCENES[2]).convert("RGB"))
    out = {}
    t = threading.Thread(target=lambda: out.update(r=Engine(predictor).segment(image).result))
    t.start()
    t.join()
    assert torch.equal(out["r"].id_map, predictor.predict(image).id_map)
