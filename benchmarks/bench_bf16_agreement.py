"""bfloat16's pixel agreement on the demo checkpoint's scenes: the category of every pixel of
the 30 bundled validation scenes against torch float32's (issue 16's target: >= 99.5 %), for
torch bfloat16, OpenVINO bfloat16, and OpenVINO with only one of its two graphs (detect, masks)
in bfloat16. Each `Predictor("demo", ...)` runs with the checkpoint's recommended settings.

    env -u OMP_WAIT_POLICY OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_bf16_agreement.py

Needs the `openvino` extra.
"""

from __future__ import annotations

import numpy as np

from panoptic_detr import Predictor
from panoptic_detr.demo import DEMO_VAL
from panoptic_detr.export.sessions import OpenVINOSession
from panoptic_detr.gt.instances import panoptic_to_semantic


def categories(predictor: Predictor) -> np.ndarray:
    results = [predictor.predict(f) for f in sorted((DEMO_VAL / "images").glob("*.jpg"))]
    return np.stack([panoptic_to_semantic(r.id_map.numpy(), r.segments_info) for r in results])


def main() -> None:
    ref = categories(Predictor("demo"))
    print(f"torch bfloat16: {100 * (categories(Predictor('demo', dtype='bfloat16')) == ref).mean():.2f} %")
    for detect_dtype, mask_dtype in [("bfloat16", "bfloat16"), ("bfloat16", "float32"),
                                     ("float32", "bfloat16"), ("float32", "float32")]:
        predictor = Predictor("demo", runtime="openvino", dtype="bfloat16")
        model = predictor.model  # the export's two graphs, each compiled at its own precision
        model.detect_session = OpenVINOSession(model.folder / "detect.onnx", None, detect_dtype)
        model.mask_session = OpenVINOSession(model.folder / "mask.onnx", None, mask_dtype)
        agreement = 100 * (categories(predictor) == ref).mean()
        print(f"openvino detect {detect_dtype}, masks {mask_dtype}: {agreement:.2f} %", flush=True)


if __name__ == "__main__":
    main()
