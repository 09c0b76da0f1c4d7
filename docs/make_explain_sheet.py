"""Draw docs/images/explain_sheet.png: the report sheet of `panoptic-detr explain` on a scene.

    PYTHONPATH=src python docs/make_explain_sheet.py [--weights demo|PATH] [--scene 1]

The scene is one of the bundled demo scenes (src/panoptic_detr/assets/demo/scenes). With the
demo checkpoint (the default, when it is bundled) the sheet shows what the trained model does,
at the input size and threshold the checkpoint recommends (128 px and 0.7, as it was trained,
when it records none). Without it a randomly initialised `tiny` model stands in and the sheet
says so in its title, so that the figure is never mistaken for a trained model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from panoptic_detr.data.files import atomic_write
from panoptic_detr.data.images import load_image
from panoptic_detr.data.synth import synth_categories
from panoptic_detr.demo import DEMO_SCENES
from panoptic_detr.explain import explain
from panoptic_detr.explain.figures import Figures
from panoptic_detr.explain.report import choose_segments, default_path_segment
from panoptic_detr.loading import WeightsError, load_pretrained

OUT = Path(__file__).resolve().parent / "images" / "explain_sheet.png"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="demo")
    p.add_argument("--scene", type=int, default=1)
    p.add_argument("--threshold", type=float, default=None,
                   help="instead of the checkpoint's (the sheet's title shows the one used)")
    args = p.parse_args()
    scene = DEMO_SCENES / f"scene_{args.scene:06d}.jpg"
    image = load_image(scene)
    try:
        source = load_pretrained(args.weights)
        name = str(args.weights)  # not the full path of the file: the title stays readable
        rec = source.inference
        settings = {"threshold": rec.get("threshold", 0.7), "size": rec.get("size", 128),
                    "max_size": rec.get("max_size", 128)}
        if args.threshold is not None:
            settings["threshold"] = args.threshold
    except WeightsError as e:
        print(f"{e}; using a randomly initialised tiny model")
        from panoptic_detr.loading import Pretrained
        from panoptic_detr.model import PRESETS, build_model
        from panoptic_detr.structures import Categories

        torch.manual_seed(0)
        model = build_model(PRESETS["tiny"].with_overrides(num_classes=12, num_queries=12)).eval()
        with torch.no_grad():  # spread the queries, or a random model predicts one thing 12 times
            model.query_embed.weight.mul_(20)
        source = Pretrained(model, model.config, Categories(synth_categories()),
                            "RANDOM tiny model (not trained)")
        settings = {"threshold": 0.0, "size": 192, "max_size": 256}
        name = source.source
    expl = explain(source, image, **settings, top_dropped=0)
    expl.meta.update(image=f"assets/demo/scenes/{scene.name}", weights=name)
    segments = choose_segments(expl)
    sheet = Figures(expl).sheet(segments, default_path_segment(expl, segments), max_segments=2)
    # an adaptive 256-colour palette keeps the README light; the report's own PNGs are RGB
    small = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT, lambda f: small.save(f, format="PNG", optimize=True))
    print(f"wrote {OUT} ({sheet.width} x {sheet.height}) with {source.source}, {settings}")


if __name__ == "__main__":
    main()
