"""Draw docs/images/synth_samples.png: synthetic scenes (top) over their panoptic labels (bottom).

    PYTHONPATH=src python docs/make_synth_samples.py

Labels are coloured by category, each thing instance a little lighter or darker than the
category colour, crowd regions hatched, void black, segment borders dark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panoptic_detr.data.files import write_png
from panoptic_detr.data.synth import make_scene, synth_categories


def colourise(id_map: np.ndarray, segments: list[dict]) -> np.ndarray:
    colors = {c["id"]: np.array(c["color"], float) for c in synth_categories()}
    out = np.zeros((*id_map.shape, 3))
    yy, xx = np.mgrid[: id_map.shape[0], : id_map.shape[1]]
    for k, s in enumerate(segments):
        m = id_map == s["id"]
        c = colors[s["category_id"]] * (0.75 + 0.5 * ((k * 0.37) % 1.0))
        if s["iscrowd"]:
            c = np.where((((yy + xx) // 4) % 2 == 0)[m][:, None], c, c * 0.4)
        out[m] = c
    edge = np.zeros(id_map.shape, bool)
    edge[1:] |= id_map[1:] != id_map[:-1]
    edge[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    out[edge] *= 0.3
    return out.clip(0, 255).astype(np.uint8)


def main() -> None:
    tiles = []
    for index in range(6):
        img, id_map, segments = make_scene(0, index, (256, 256), crowd_prob=0.5)
        tiles.append(np.concatenate([img, np.full((4, 256, 3), 255, np.uint8), colourise(id_map, segments)]))
        tiles.append(np.full((tiles[-1].shape[0], 4, 3), 255, np.uint8))
    out = Path(__file__).parent / "images" / "synth_samples.png"
    write_png(out, np.concatenate(tiles[:-1], axis=1), compress_level=9)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
