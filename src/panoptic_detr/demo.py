"""The demo: segment bundled synthetic scenes (and any images given) with the bundled
checkpoint, write overlays and COCO-panoptic files, and score PQ on a bundled validation set.

Everything it needs ships in `assets/demo/`:

    demo.pt            the checkpoint, trained by `panoptic-detr train` with demo.yaml
    demo.yaml          the exact training config that produced it
    scenes/*.jpg       a few synthetic scenes to segment
    val/               a COCO-panoptic validation set (synthetic, a seed the training never saw)

`run_demo(train=True)` first reproduces the checkpoint with demo.yaml (a progress bar shows
the way) and then uses that one.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ASSETS = Path(str(resources.files("panoptic_detr.assets")))
DEMO_DIR = ASSETS / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
DEMO_SCENES = DEMO_DIR / "scenes"
DEMO_VAL = DEMO_DIR / "val"
VAL_SEED, SCENE_SEED = 2026, 2027
"""Seeds of the bundled validation set and scenes (training uses seeds 0 and 1)."""


@dataclass
class DemoResult:
    out_dir: Path
    predicted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pq: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def train_demo_checkpoint(out_dir: str | os.PathLike[str], overrides: list[str] | None = None,
                          progress: bool = True) -> Path:
    """Train a checkpoint as demo.yaml says into `out_dir`; returns the best checkpoint's path."""
    from .train.config import load_config
    from .train.loop import train

    cfg = load_config(DEMO_CONFIG, [f"out_dir={Path(out_dir) / 'run'}", *(overrides or [])])
    train(cfg, resume=(Path(cfg.out_dir) / "checkpoint_last.pt").is_file(), progress=progress)
    best = Path(cfg.out_dir) / "checkpoint_best.pt"
    return best if best.is_file() else Path(cfg.out_dir) / "checkpoint_last.pt"


def run_demo(images: list[str] | None = None, out_dir: str | os.PathLike[str] = "demo_out",
             weights: str | os.PathLike[str] = "demo", train: bool = False, device: str = "cpu",
             progress: bool = True, log=print, **settings: Any) -> DemoResult:
    """Segment the bundled scenes plus `images` into OUT/predict and score OUT/val (PQ), with
    one `Predictor` (settings: threshold=, size=, ... as it takes them; by default the
    checkpoint's, else DETR's, as every command runs a model)."""
    from .eval.evaluate import format_table
    from .eval.evaluate_model import evaluate_model
    from .predictor import Predictor, check_settings
    from .runner import predict_files

    check_settings(settings)  # a bad value fails before minutes of training
    start = time.perf_counter()
    out = Path(out_dir)
    if train:
        weights = train_demo_checkpoint(out / "train", progress=progress)
        log(f"trained {weights}")
    predictor = Predictor(weights, device=device, **settings)
    log(f"weights: {predictor.pretrained.source}")
    inputs = sorted(str(p) for p in DEMO_SCENES.glob("*.jpg")) + list(images or [])
    summary = predict_files(inputs, out / "predict", predictor=predictor, overwrite=True, progress=progress)
    result = DemoResult(out_dir=out, predicted=summary.done, failed=summary.failed)
    for line in summary.failed:
        log(line, file=sys.stderr)
    if summary.error:  # the output folder cannot be written: nothing further can be
        raise OSError(summary.error)
    log(f"segmented {len(summary.done)} images -> {out / 'predict'} (COCO panoptic PNGs, overlays, "
        "predictions.json)")
    result.pq = evaluate_model(predictor, DEMO_VAL, out / "val", workers=1, overwrite=True, progress=progress)
    log(f"PQ on the bundled validation set ({DEMO_VAL}):")
    log(format_table(result.pq))
    result.seconds = time.perf_counter() - start
    log(f"done in {result.seconds:.1f} s")
    return result


def make_demo_assets(n_val: int = 30, n_scenes: int = 4) -> None:
    """(Re)generate the bundled scenes and validation set (maintainers; deterministic)."""
    import shutil
    import tempfile

    from .data.synth import make_dataset

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    make_dataset(DEMO_VAL, n_val, seed=VAL_SEED, size=(256, 256), overwrite=True, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, n_scenes, seed=SCENE_SEED, size=(192, 256), progress=False)
        DEMO_SCENES.mkdir(exist_ok=True)
        for p in sorted((Path(tmp) / "images").glob("*.jpg")):
            shutil.copy(p, DEMO_SCENES / f"scene_{p.name}")
