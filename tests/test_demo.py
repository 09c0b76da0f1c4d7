"""The demo: bundled checkpoint, scenes and validation set, end to end; and its --train path."""

from __future__ import annotations

import json

from panoptic_detr.cli import main
from panoptic_detr.demo import DEMO_SCENES, DEMO_VAL, train_demo_checkpoint
from panoptic_detr.loading import load_pretrained


def test_bundled_assets_are_consistent():
    pre = load_pretrained("demo")
    gt = json.loads((DEMO_VAL / "panoptic.json").read_text())
    assert {c["id"] for c in gt["categories"]} == {c["id"] for c in pre.categories.items}
    assert pre.inference["size"] == 128  # the checkpoint says how it wants its input
    assert len(list(DEMO_SCENES.glob("*.jpg"))) >= 4


def test_demo_command_writes_predictions_and_scores(tmp_path, capsys):
    extra = tmp_path / "not_an_image.jpg"
    extra.write_text("no")
    code = main(["demo", str(extra), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1  # the bad extra input fails alone; the rest ran
    predictions = json.loads((tmp_path / "out" / "predict" / "predictions.json").read_text())
    assert len(predictions["annotations"]) == len(list(DEMO_SCENES.glob("*.jpg")))
    assert (tmp_path / "out" / "val" / "predictions.json").is_file()
    out = capsys.readouterr()
    assert "PQ" in out.out and "Things" in out.out and "not_an_image.jpg" in out.err


def test_demo_train_path_produces_a_loadable_checkpoint(tmp_path):
    overrides = ["steps=2", "batch_size=2", "data.synth.n_train=4", "data.synth.n_val=2",
                 f"data.train={tmp_path / 'data' / 'train'}", f"data.val={tmp_path / 'data' / 'val'}",
                 "eval_every=2", "checkpoint_every=2", "model.preset=tiny", "data.augment=false",
                 f"export={tmp_path / 'demo.pt'}"]
    path = train_demo_checkpoint(tmp_path, overrides=overrides, progress=False)
    pre = load_pretrained(path)
    assert pre.inference == {"size": 128, "max_size": 160, "threshold": 0.3, "overlap_threshold": 0.5,
                             "pixel_assignment": "score"}


def test_demo_into_an_unwritable_folder_is_one_line_and_exit_1(tmp_path, capsys):
    taken = tmp_path / "a_file"
    taken.write_text("not a folder")
    assert main(["demo", "--out", str(taken), "--quiet"]) == 1
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cannot write the results there" in err[-1]
    assert str(taken) in err[-1] and "segmented" not in out.out  # it stops at the first write
