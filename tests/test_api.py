"""The Python API as a new user meets it: `from panoptic_detr import Predictor`, every kind of
image in (the same segments as the file's path), results with names, HF's form, overlay, save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr import PanopticResult, Predictor, Segment
from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.demo import DEMO_SCENES

SCENE = sorted(DEMO_SCENES.glob("*.jpg"))[1]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()  # the demo model, at its recommended 128 px


@pytest.fixture(scope="module")
def expected(predictor) -> PanopticResult:
    result = predictor(SCENE)
    assert len(result.segments_info) >= 4  # the comparisons below compare real segments
    return result


def same(a: PanopticResult, b: PanopticResult) -> None:
    assert torch.equal(a.id_map, b.id_map)
    key = [(s.id, s.category_id, s.area) for s in a.segments]
    assert key == [(s.id, s.category_id, s.area) for s in b.segments]
    assert np.allclose([s.score for s in a.segments], [s.score for s in b.segments], atol=1e-6)


def rgb() -> np.ndarray:
    with Image.open(SCENE) as im:
        return np.array(im.convert("RGB"))


@pytest.mark.parametrize("kind", ["str", "pil", "numpy", "bgr", "rgba", "chw_uint8", "hwc_uint8",
                                  "chw_float", "hwc_float", "numpy_float"])
def test_every_input_type_gives_the_path_segments(predictor, expected, kind):
    a = rgb()
    image, order = {
        "str": (str(SCENE), "RGB"),
        "pil": (Image.open(SCENE), "RGB"),
        "numpy": (a, "RGB"),
        "bgr": (np.ascontiguousarray(a[..., ::-1]), "BGR"),  # an OpenCV frame
        "rgba": (np.dstack([a, np.full(a.shape[:2], 7, np.uint8)]), "RGB"),
        "chw_uint8": (torch.from_numpy(a).permute(2, 0, 1), "RGB"),
        "hwc_uint8": (torch.from_numpy(a), "RGB"),
        "chw_float": (torch.from_numpy(a).permute(2, 0, 1).float() / 255, "RGB"),
        "hwc_float": (torch.from_numpy(a).double() / 255, "RGB"),
        "numpy_float": (a.astype(np.float32) / 255, "RGB"),
    }[kind]
    same(predictor(image, channel_order=order), expected)


def test_grayscale_forms_agree(predictor, tmp_path):
    gray = np.array(Image.open(SCENE).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    from_path = predictor(tmp_path / "gray.png")
    for image in (gray, gray[..., None], Image.fromarray(gray), torch.from_numpy(gray)[None]):
        same(predictor(image), from_path)


def test_a_list_gives_a_list_in_order(predictor, expected):
    other = sorted(DEMO_SCENES.glob("*.jpg"))[0]
    results = predictor([rgb(), other])
    assert isinstance(results, list) and len(results) == 2
    same(results[0], expected)
    same(results[1], predictor.predict(other))
    assert predictor.predict_batch([]) == []


@pytest.mark.parametrize("bad", [123, b"\x89PNG", {"image": 1}, None])
def test_other_types_say_what_is_accepted(predictor, bad):
    with pytest.raises(TypeError, match="a file path, a PIL image, a numpy array .* or a torch tensor"):
        predictor(bad)


@pytest.mark.parametrize("bad", [np.zeros((4, 5, 2), np.uint8), np.full((4, 5, 3), 2.0),
                                 np.full((4, 5, 3), 300, np.int32), torch.zeros(2, 3, 8, 8)])
def test_bad_arrays_are_one_clear_value_error(predictor, bad):
    with pytest.raises(ValueError, match="image"):
        predictor(bad)


def test_segments_carry_names_and_masks(expected, predictor):
    id_map = expected.id_map.numpy()
    for info, seg in zip(expected.segments_info, expected.segments, strict=True):
        assert isinstance(seg, Segment)
        assert seg.name == seg.label == predictor.categories.name(info["category_id"])
        assert seg.isthing == predictor.categories.isthing(seg.category_id)
        assert seg.mask.dtype == bool and seg.mask.shape == expected.size
        assert np.array_equal(seg.mask, id_map == seg.id) and seg.mask.sum() == seg.area
        ys, xs = np.nonzero(seg.mask)
        assert seg.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_to_hf_masks_equal_the_id_map(expected):
    hf = expected.to_hf()
    id_map = expected.id_map.numpy()
    assert [d["label"] for d in hf] == [s.name for s in expected.segments]
    for d, info in zip(hf, expected.segments_info, strict=True):
        assert set(d) == {"label", "score", "mask"} and d["score"] == pytest.approx(info["score"])
        assert isinstance(d["mask"], Image.Image) and d["mask"].mode == "L"
        assert np.array_equal(np.asarray(d["mask"]) == 255, id_map == info["id"])
        assert set(np.unique(np.asarray(d["mask"]))) <= {0, 255}


def test_overlay_is_a_pil_image_of_the_picture(expected):
    pic = expected.overlay(SCENE)
    assert isinstance(pic, Image.Image)
    h, w = expected.size
    assert pic.height >= h and pic.width >= w
    plain = expected.overlay(rgb(), legend=False)
    assert plain.size == (w, h) and not np.array_equal(np.asarray(plain), rgb())
    with pytest.raises(ValueError, match="categories"):
        PanopticResult(expected.id_map, expected.segments_info).overlay(SCENE)


def test_save_round_trips_and_never_overwrites_unasked(expected, tmp_path):
    png, doc = expected.save(tmp_path, "scene")
    assert np.array_equal(read_panoptic_png(png), expected.id_map.numpy())
    coco = json.loads(doc.read_text())
    (ann,) = coco["annotations"]
    assert ann["file_name"] == "scene.png" and coco["images"][0]["height"] == expected.size[0]
    assert [s["id"] for s in ann["segments_info"]] == [s["id"] for s in expected.segments_info]
    assert [s["name"] for s in ann["segments_info"]] == [s.name for s in expected.segments]
    assert {c["id"] for c in coco["categories"]} >= {s.category_id for s in expected.segments}
    with pytest.raises(FileExistsError, match="overwrite"):
        expected.save(tmp_path, "scene")
    expected.save(tmp_path, "scene", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.json", "scene.png"]  # no temp files


def test_package_import_and_cli_parser_stay_torch_free():
    code = ("import sys, panoptic_detr; from panoptic_detr.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from panoptic_detr import Predictor; assert 'torch' in sys.modules")
    src = str(Path(__file__).resolve().parents[1] / "src")  # this checkout, installed or not
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src})


def test_the_readme_python_section_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    blocks = [b for b in blocks if not b.startswith("# Hugging Face")]  # needs transformers and a download
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    Image.open(SCENE).save("photo.jpg", quality=95)  # the README's photo
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    assert (tmp_path / "overlay.png").is_file() and (tmp_path / "out" / "photo.png").is_file()
    assert len(capsys.readouterr().out.splitlines()) == len(scope["result"].segments)
    same(scope["e"], scope["d"])
    for r in (scope["a"], scope["b"], scope["c"]):
        same(r, scope["d"])


# -- which weights run: said by every command that runs a model -----------------------------

def test_predict_and_evaluate_say_which_weights(tmp_path, capsys):
    from panoptic_detr.cli import build_parser, main
    from panoptic_detr.data.synth import make_dataset

    assert main(["predict", str(SCENE), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("weights: demo, the bundled synthetic demo model, as no --weights was given")
    assert "--weights detr_r50_panoptic" in first
    assert main(["predict", str(SCENE), "--out", str(tmp_path / "b"), "--weights", "demo", "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("weights: demo, the bundled synthetic demo model (") and "demo.pt" in first
    data = make_dataset(tmp_path / "ds", 2, size=(64, 64), progress=False)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "ev"), "--workers", "0",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("weights: demo, the bundled synthetic demo model, as no --weights was given")
    assert "PQ" in out
    parser = build_parser()
    for command in (["predict", "x", "--out", "o"], ["evaluate"], ["explain", "x", "--out", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--help"])
        assert "(default: demo)" in " ".join(capsys.readouterr().out.split())


def test_train_says_which_weights_it_starts_from(tmp_path, monkeypatch, capsys):
    # the line comes before training (here replaced by a stub): from scratch, init=, --resume
    from panoptic_detr.cli import main
    from panoptic_detr.train import loop

    runs = []
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: runs.append((cfg.init, kw["resume"])) or {})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndata: {{train: {tmp_path / 'data'}}}\ndevice: cpu\n")
    out = f"out_dir={tmp_path / 'run'}"
    cases = [
        ([], "weights: none, random initialisation (no pretrained part); init=WEIGHTS starts from"),
        (["model.overrides={pretrained_backbone: true, backbone_norm: frozen_bn}"],
         "weights: none, random initialisation (the backbone from torchvision's ImageNet weights)"),
        (["init=demo"], "weights: demo, the bundled synthetic demo model ("),
        (["init=detr_r50_panoptic"], "weights: detr_r50_panoptic (COCO panoptic, PQ"),
        (["--resume"], f"weights: resuming {tmp_path / 'run' / 'checkpoint_last.pt'} (its model"),
        (["init=demo", "--resume-from", "old.pt"], "weights: resuming old.pt (its model"),
    ]
    for extra, first in cases:
        assert main(["train", "--config", str(cfg), *extra[:1], out, *extra[1:]]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith(first), extra
    assert [r[0] for r in runs] == ["", "", "demo", "detr_r50_panoptic", "", "demo"]


# -- folders: image files only, --recursive, dataset folders ---------------------------------

def test_folders_give_their_image_files(tmp_path):
    from panoptic_detr.runner import expand_inputs

    for name in ("a.jpg", "b.PNG", ".hidden.png", "sub/c.tif", "sub/deeper/d.webp", ".git/e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    for name in ("notes.txt", "panoptic.json.bak", "sub/readme.md"):
        (tmp_path / name).write_text("not an image")
    files, problems = expand_inputs([tmp_path])
    assert problems == [] and [f.name for f in files] == ["a.jpg", "b.PNG"]
    files, problems = expand_inputs([tmp_path], recursive=True)
    assert problems == [] and [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.jpg", "b.PNG", "sub/c.tif", "sub/deeper/d.webp"]
    (tmp_path / "sub" / "c.tif").unlink()
    files, problems = expand_inputs([tmp_path / "sub"])
    assert files == [] and problems == [f"{tmp_path / 'sub'}: no image files in it (.jpg, .png, .tif, .webp, "
                                        "...); --recursive looks in its subfolders"]
    files, problems = expand_inputs([tmp_path / "notes.txt"])  # named on its own: tried (and reported)
    assert files == [tmp_path / "notes.txt"] and problems == []


def test_a_dataset_folder_gives_its_images_not_its_annotations(tmp_path, capsys):
    from panoptic_detr.cli import main
    from panoptic_detr.data.synth import make_dataset
    from panoptic_detr.runner import expand_inputs

    make_dataset(tmp_path / "ds", 2, size=(48, 48), progress=False)
    data = tmp_path / "ds"
    images = sorted((data / "images").iterdir())
    for recursive in (False, True):
        assert expand_inputs([data], recursive=recursive) == ([p.resolve() for p in images], [])
    assert main(["predict", str(data), "--out", str(tmp_path / "out"), "--quiet", "--recursive"]) == 0
    assert "2 inputs: 2 predicted" in capsys.readouterr().out
