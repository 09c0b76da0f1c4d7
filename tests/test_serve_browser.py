"""The page of `panoptic-detr serve` in headless Chromium (Playwright driving Debian's
`chromium`) against a real uvicorn server: upload a bundled scene, see the overlay and the
legend (each thing instance in a colour of its own, `viz.palette`'s), hover a segment, move
the threshold, toggle a class; drop and paste an image; with no console errors.

PANOPTIC_DETR_SCREENSHOT=docs/images/serve.png also saves the README's screenshot.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("playwright", reason="playwright (the Python package) is not installed")
import uvicorn  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from panoptic_detr.predictor import Predictor  # noqa: E402
from panoptic_detr.serve import create_app  # noqa: E402
from panoptic_detr.viz import palette  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SCENE = Path(__file__).resolve().parents[1] / "src/panoptic_detr/assets/demo/scenes/scene_000001.jpg"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor("demo")


@pytest.fixture(scope="module")
def server(predictor):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@contextlib.contextmanager
def chromium_page(server: str, errors: list[str]) -> Iterator[Any]:
    """The server's page in headless Chromium, loaded and showing the model; console errors and
    page errors are appended to `errors`."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_function("() => document.getElementById('model').textContent.includes('torch')")
            yield page
        finally:
            browser.close()


def _segment_point(result, segment_id: int) -> tuple[float, float]:
    """(x, y) in image pixels of a pixel deep inside the segment (its most central one)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    inside = result.id_map.numpy() == segment_id
    depth = distance_transform_edt(inside)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return x + 0.5, y + 0.5


def test_page_in_chromium(server, predictor, tmp_path):
    expected = predictor.predict(SCENE)
    other = Predictor("demo", threshold=0.7).predict(SCENE)
    assert len(other.segments_info) != len(expected.segments_info)
    errors: list[str] = []
    with chromium_page(server, errors) as page:
        page.set_input_files("#file", str(SCENE))

        # the overlay and the legend: one entry per segment, predict's
        legend = page.locator("#legend li")
        legend.first.wait_for()
        assert legend.count() == len(expected.segments_info)
        assert page.locator("#overlay").is_visible()
        names = [s["name"] for s in predict_json(expected, predictor)]
        shown = page.locator("#legend li > span:nth-child(2)").all_inner_texts()
        assert [t.split(": ", 1)[1] for t in shown] == names
        painted = page.evaluate("""() => {
            const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let white = 0; for (let i = 0; i < d.length; i += 4) white += d[i] === 255 && d[i+1] === 255
                && d[i+2] === 255; return [c.width, c.height, white]; }""")
        assert painted[:2] == [expected.size[1], expected.size[0]] and painted[2] > 100  # outlines

        # every segment in its own colour, `viz.palette`'s, instances of one class included,
        # drawn over the image at the segment's inside
        colors = palette(expected, predictor.categories)
        swatches = page.locator("#legend .swatch").evaluate_all(
            "els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert swatches == [f"rgb({r}, {g}, {b})" for r, g, b in
                            (colors[s["id"]] for s in expected.segments_info)]
        classes = [s["category_id"] for s in expected.segments_info if s["isthing"]]
        assert len(set(classes)) < len(classes)  # the scene has instances of one class
        for s in expected.segments_info:
            x, y = (int(v) for v in _segment_point(expected, s["id"]))
            drawn = page.evaluate("""([x, y]) => {
                const c = document.getElementById('overlay'), w = c.width, p = 4 * (y * w + x);
                const out = c.getContext('2d').getImageData(x, y, 1, 1).data;
                return [[...out.slice(0, 3)], [...state.pixels.slice(p, p + 3)]]; }""", [x, y])
            want = [src * 0.45 + c * 0.55 for src, c in zip(drawn[1], colors[s["id"]], strict=True)]
            assert max(abs(a - b) for a, b in zip(drawn[0], want, strict=True)) <= 1, s

        # hover the largest thing: the tooltip names its class, the attention panel fills
        seg = max((s for s in expected.segments_info if s["isthing"]), key=lambda s: s["area"])
        box = page.locator("#overlay").bounding_box()
        x, y = _segment_point(expected, seg["id"])
        scale = box["width"] / expected.size[1]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        tooltip = page.locator("#tooltip")
        tooltip.wait_for(state="visible")
        assert tooltip.inner_text().startswith(predictor.categories.name(seg["category_id"]))
        page.locator("#explain img").first.wait_for()
        assert page.locator("#explain img").count() == predictor.model.config.mask_heads + 1
        if os.environ.get("PANOPTIC_DETR_SCREENSHOT"):  # 256 colours: a third of the bytes
            shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
            shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                os.environ["PANOPTIC_DETR_SCREENSHOT"], optimize=True)

        # the slider re-thresholds: the legend becomes a fresh run's at that threshold
        page.mouse.move(0, 0)
        page.evaluate("""() => { const s = document.getElementById('threshold');
            s.value = '0.7'; s.dispatchEvent(new Event('input')); }""")
        n = len(other.segments_info)
        page.wait_for_function(f"() => document.getElementById('count').textContent === '{n} segments'")
        assert legend.count() == n

        # a click on a legend entry hides its class
        legend.first.click()
        assert "hidden" in (legend.first.get_attribute("class") or "")
        page.screenshot(path=str(tmp_path / "after.png"))
    assert errors == []


DROP_AND_PASTE = """([b64, name, how]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: name.endsWith('.jpg') ? 'image/jpeg' : 'image/png' }));
    if (how === 'drop') {
        const drop = document.getElementById('drop');
        const init = { dataTransfer: data, bubbles: true, cancelable: true };
        drop.dispatchEvent(new DragEvent('dragover', init));
        drop.dispatchEvent(new DragEvent('drop', init));
    } else {
        document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true,
                                                             cancelable: true }));
    }
}"""


def test_drop_and_paste_in_chromium(server, predictor):
    # a file dropped on the drop zone, then an image pasted (a PNG without a name, as from a
    # screenshot tool): each segmented, the legend predict's for that image
    import base64

    scenes = sorted(SCENE.parent.glob("*.jpg"))
    dropped = scenes[2]
    pasted = io.BytesIO()
    Image.open(scenes[0]).save(pasted, format="PNG")
    cases = [("drop", dropped.name, dropped.read_bytes(), predictor.predict(dropped), dropped.name),
             ("paste", "", pasted.getvalue(), predictor.predict(scenes[0]), "pasted image")]
    errors: list[str] = []
    with chromium_page(server, errors) as page:
        for how, name, data, expected, shown_as in cases:
            page.evaluate(DROP_AND_PASTE, [base64.b64encode(data).decode(), name, how])
            h, w = expected.size
            page.wait_for_function(f"() => document.getElementById('status').textContent === "
                                   f"'{shown_as}: {w} \u00d7 {h}'")
            shown = page.locator("#legend li > span:nth-child(2)").all_inner_texts()
            assert shown == [f"{s['id']}: {s['name']}" for s in predict_json(expected, predictor)], how
            assert "over" not in (page.locator("#drop").get_attribute("class") or "")
    assert errors == []


def predict_json(result, predictor):
    from panoptic_detr.runner import segments_json

    return segments_json(result, predictor.categories)
