"""Draw docs/images/overlay_256.png and overlay_3000.jpg: one bundled demo scene segmented by
the demo model and drawn by `PanopticResult.overlay` at 256 px and at 3000 px, to show that
labels, outlines and legend keep their proportions (font 2.1% of the longer side).

    PYTHONPATH=src python docs/make_overlay_examples.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from panoptic_detr import Predictor
from panoptic_detr.demo import DEMO_SCENES

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    predictor = Predictor()  # the demo model
    scene = Image.open(sorted(DEMO_SCENES.glob("*.jpg"))[1]).convert("RGB")
    for side, name in ((256, "overlay_256.png"), (3000, "overlay_3000.jpg")):
        scale = side / max(scene.size)
        size = (round(scene.width * scale), round(scene.height * scale))
        image = scene.resize(size, Image.Resampling.BICUBIC)
        picture = predictor(image).overlay(image)
        picture.save(OUT / name, **({"quality": 85} if name.endswith(".jpg") else {}))
        print(f"wrote {OUT / name} ({picture.width}x{picture.height})")


if __name__ == "__main__":
    main()
