"""Draw docs/images/explain_sheet.png: the report sheet of `panoptic-detr explain` on a scene.

    PYTHONPATH=src python docs/make_explain_sheet.py [--weights demo|PATH] [--index 3]

The scene is synthetic scene INDEX of seed 0 (`data.synth.make_scene`, 256 x 256). With the
demo checkpoint (the default, when it is bundled) the sheet shows what the trained model
does; without it a randomly initialised `tiny` model stands in and the sheet says so in its
title, so that the figure is never mistaken for a trained model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from panoptic_detr.data.files import atomic_write
from panoptic_detr.data.synth import make_scene, synth_categories
from panoptic_detr.explain import explain
from panoptic_detr.explain_figures import Figures
from panoptic_detr.explain_report import choose_segments, default_path_segment

OUT = Path(__file__).resolve().parent / "images" / "explain_sheet.png"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="demo")
    p.add_argument("--index", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.85)
    args = p.parse_args()
    image, _, _ = make_scene(0, args.index, (256, 256))

    from panoptic_detr.loading import WeightsError, load_pretrained

    try:
        source = load_pretrained(args.weights)
        name, threshold, sizes = source.source, args.threshold, {}
    except WeightsError as e:
        print(f"{e}; using a randomly initialised tiny model")
        from panoptic_detr.model import PRESETS, build_model
        from panoptic_detr.structures import Categories

        torch.manual_seed(0)
        model = build_model(PRESETS["tiny"].with_overrides(num_classes=12, num_queries=12)).eval()
        with torch.no_grad():  # spread the queries, or a random model predicts one thing 12 times
            model.query_embed.weight.mul_(20)
        source = type("Random", (), {"model": model, "categories": Categories(synth_categories()),
                                     "source": "RANDOM tiny model (not trained)"})()
        name, threshold, sizes = source.source, 0.0, {"short": 256, "max_size": 256}
    expl = explain(source, image, threshold=threshold, **sizes)
    expl.meta.update(image=f"synthetic scene {args.index} (seed 0)", weights=name)
    segments = choose_segments(expl)
    sheet = Figures(expl).sheet(segments, default_path_segment(expl, segments), max_segments=2)
    # an adaptive 256-colour palette keeps the README light; the report's own PNGs are RGB
    small = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT, lambda f: small.save(f, format="PNG", optimize=True))
    print(f"wrote {OUT} ({sheet.width} x {sheet.height}) with {name}")


if __name__ == "__main__":
    main()
