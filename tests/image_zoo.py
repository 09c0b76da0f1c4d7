"""Awkward image files for tests of anything that reads images (load_image, predict, explain).

`write_image_zoo(folder)` writes one file of each kind and returns {file name: expected},
where expected is the (height, width) that `load_image` must give (after EXIF rotation) or
`None` for a file that must fail with one `ImageError` line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image_zoo(folder: Path, huge: bool = False) -> dict[str, tuple[int, int] | None]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8))
    out: dict[str, tuple[int, int] | None] = {}

    def save(name: str, im: Image.Image, expected: tuple[int, int] | None, **kw) -> None:
        im.save(folder / name, **kw)
        out[name] = expected

    save("rgb.jpg", rgb, (24, 32), quality=95)
    save("gray.png", rgb.convert("L"), (24, 32))
    save("gray_alpha.png", rgb.convert("LA"), (24, 32))
    save("rgba.png", rgb.convert("RGBA"), (24, 32))
    save("palette.png", rgb.convert("P"), (24, 32))
    save("bilevel.png", rgb.convert("1"), (24, 32))
    save("cmyk.jpg", rgb.convert("CMYK"), (24, 32), quality=95)
    save("gray16.png", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), (24, 32))
    exif = rgb.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    save("exif_rotated.jpg", rgb, (32, 24), exif=exif, quality=95)
    save("one_pixel.png", Image.new("RGB", (1, 1), (10, 20, 30)), (1, 1))
    if huge:
        save("huge_10000.png", Image.new("1", (10000, 10000), 1), (10000, 10000))

    data = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out["truncated.jpg"] = None
    (folder / "not_an_image.jpg").write_text("just text")
    out["not_an_image.jpg"] = None
    (folder / "empty.png").write_bytes(b"")
    out["empty.png"] = None
    return out
