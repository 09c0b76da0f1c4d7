"""COCO-panoptic datasets as a torch `Dataset`: (image, Target) pairs, read lazily.

The constructor reads the JSON only; `__getitem__` decodes that one sample's image and
panoptic PNG. Category metadata (names, isthing, colours) come from the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..ops.boxes import xyxy_to_cxcywh
from ..ops.panoptic import segment_stats
from ..structures import Categories, Target
from .images import load_image
from .layout import find_layout
from .panoptic_png import read_panoptic_png

Transforms = Callable[[Tensor, Target], tuple[Tensor, Target]]


class CocoPanoptic(Dataset):
    """A COCO-panoptic dataset: `dataset[i] -> (image [3, H, W] float in 0..1, Target)`.

    Give either a `root` or the explicit paths (explicit paths override what the root gives).
    Accepted root layouts:

    - `root/panoptic.json`, PNGs in `root/panoptic/`, images in `root/images/` (what
      `panoptic-detr synth` writes);
    - the COCO layout: `root/annotations/panoptic_SPLIT.json`, PNGs in
      `root/annotations/panoptic_SPLIT/` (or `root/panoptic_SPLIT/`), images in `root/SPLIT/`
      or `root/images/SPLIT/` (or `root/images/`);
    - a folder with one `NAME.json` and its PNG folder `NAME/`; or `root` = the JSON file.

    Only images that have an annotation are samples. The Target holds one binary mask per
    listed segment in `segments_info` order, with `labels` = category ids, normalised cxcywh
    boxes and pixel areas from the masks, `iscrowd` and `segment_ids`. Segments absent from
    the PNG are left out (run `panoptic-detr check` to list them). `transforms(image, target)`
    returns the pair to use (e.g. data/transforms.py's resize + normalisation).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        json_path: str | Path | None = None,
        png_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        transforms: Transforms | None = None,
    ) -> None:
        found: tuple[Path | None, Path | None, Path | None] = (None, None, None)
        if root is not None:
            found = find_layout(root)
        elif json_path is None:
            raise ValueError("CocoPanoptic needs a root or json_path")
        self.json_path = Path(json_path) if json_path is not None else found[0]
        self.png_dir = Path(png_dir) if png_dir is not None else found[1]
        if self.png_dir is None:
            self.png_dir = self.json_path.parent / self.json_path.stem
        self.image_dir = Path(image_dir) if image_dir is not None else found[2]
        self.transforms = transforms
        with open(self.json_path) as f:
            data = json.load(f)
        self.categories = Categories(data.get("categories", []))
        anns = {a["image_id"]: a for a in data.get("annotations", [])}
        self.image_infos: list[dict[str, Any]] = [im for im in data.get("images", []) if im["id"] in anns]
        self.annotations: list[dict[str, Any]] = [anns[im["id"]] for im in self.image_infos]

    def __len__(self) -> int:
        return len(self.image_infos)

    def image_path(self, index: int) -> Path:
        if self.image_dir is None:
            raise FileNotFoundError(f"{self.json_path}: no image folder found; pass image_dir")
        return self.image_dir / self.image_infos[index]["file_name"]

    def png_path(self, index: int) -> Path:
        return self.png_dir / self.annotations[index]["file_name"]

    def load_panoptic(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(id_map [H, W] int64 with 0 = void, segments_info) of sample `index`.

        A missing PNG raises FileNotFoundError, an unreadable one ValueError, both "PATH: problem".
        """
        path = self.png_path(index)
        try:
            id_map = read_panoptic_png(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing panoptic PNG") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path}: unreadable panoptic PNG ({' '.join(str(e).split())})") from None
        return id_map, self.annotations[index]["segments_info"]

    def load_target(self, index: int) -> Target:
        """The Target of sample `index` at the PNG's size (no image decoded)."""
        id_map, segments = self.load_panoptic(index)
        h, w = id_map.shape
        ids = torch.tensor([int(s["id"]) for s in segments], dtype=torch.int64)
        id_t = torch.from_numpy(id_map)
        area, bbox = segment_stats(id_t, ids)  # one pass over the pixels, not one per mask
        keep = area > 0
        segments = [s for s, k in zip(segments, keep.tolist(), strict=True) if k]
        ids, area, bbox = ids[keep], area[keep], bbox[keep].float()
        masks = id_t[None] == ids[:, None, None]  # S x H x W
        xyxy = torch.cat([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], dim=1)
        boxes = xyxy / torch.tensor([w, h, w, h], dtype=torch.float32)
        return Target(
            masks=masks,
            labels=torch.tensor([int(s["category_id"]) for s in segments], dtype=torch.int64),
            boxes=xyxy_to_cxcywh(boxes),
            iscrowd=torch.tensor([bool(s.get("iscrowd", 0)) for s in segments], dtype=torch.bool),
            area=area.float(),
            image_id=self.image_infos[index]["id"],
            orig_size=(h, w),
            size=(h, w),
            segment_ids=ids,
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        path = self.image_path(index)
        pixels = load_image(path)  # H x W x 3 uint8; ImageError names the file
        target = self.load_target(index)
        if pixels.shape[:2] != target.size:
            raise ValueError(f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but its panoptic "
                             f"PNG {self.png_path(index)} is {target.size[1]}x{target.size[0]}")
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)  # 3 x H x W
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
