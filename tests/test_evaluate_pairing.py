"""eval/evaluate.py: predictions paired with the right ground-truth image or not scored at all,
prediction JSON checked field by field, and the README's predict -> evaluate flow."""

from __future__ import annotations

import json
import shutil

import pytest

from demo_subsets import demo_val_subset
from panoptic_detr.cli import main
from panoptic_detr.eval.evaluate import EvaluationError, evaluate_files
from test_evaluate import broken_copy, expected, paths
from test_pq import assert_results_equal


def problems_of(gt_json, gt_dir, pred_json):
    with pytest.raises(EvaluationError) as e:
        evaluate_files(gt_json, gt_dir, pred_json, None, workers=0)
    return e.value.problems


def test_malformed_fields_are_one_line_each_naming_file_annotation_and_field(reference, tmp_path):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    a, b = doc["annotations"]
    doc["annotations"] += [None, {**json.loads(json.dumps(a)), "image_id": [a["image_id"]]}]
    a["segments_info"][0]["id"] = "abc"
    b["segments_info"] = "not a list"
    pred_json.write_text(json.dumps(doc))
    assert problems_of(gt_json, gt_dir, pred_json) == [
        f'{pred_json}: annotation of image id {a["image_id"]}: segments_info[0].id "abc" is not an integer',
        f"{pred_json}: annotation of image id {b['image_id']}: segments_info is str, not a list",
        f"{pred_json}: annotation #2: not an object (null)",
        f"{pred_json}: annotation #3: image_id [{a['image_id']}] is not an integer",
    ]


def test_cli_malformed_prediction_is_no_traceback(reference, tmp_path, capsys):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    doc["annotations"][0]["segments_info"] = [None, {"id": 3}]
    doc["annotations"][1]["file_name"] = 7
    pred_json.write_text(json.dumps(doc))
    argv = ["evaluate", "--gt", str(gt_json), "--pred", str(pred_json), "--quiet", "--workers", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {pred_json}: annotation of image id {doc['annotations'][0]['image_id']}: "
        "segments_info[0] is not an object",
        f"error: {pred_json}: annotation of image id {doc['annotations'][0]['image_id']}: "
        "segments_info[1] has no category_id",
        f"error: {pred_json}: annotation of image id {doc['annotations'][1]['image_id']}: "
        "file_name 7 is not a file name",
        "3 problem(s); no score"]


def test_two_predictions_for_one_image_are_a_problem(reference, tmp_path):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    a, b = doc["annotations"]
    doc["annotations"].append(dict(a))
    pred_json.write_text(json.dumps(doc))
    (line,) = problems_of(gt_json, gt_dir, pred_json)
    assert line.startswith(f"{pred_json}: 2 predictions for image id {a['image_id']} ({a['file_name']})")


def test_ids_that_disagree_with_the_file_names_are_re_paired(reference, tmp_path):
    """Predictions numbered another way (swapped ids here) pair by file name: the reference
    score, and the re-pairing counted."""
    gt_json, gt_dir, _, _ = paths(reference, "2")
    _, _, pred_json, pred_dir = paths(reference, "2")
    doc = json.loads(pred_json.read_text())
    a, b = doc["annotations"]
    a["image_id"], b["image_id"] = b["image_id"], a["image_id"]
    renumbered = tmp_path / "predictions.json"
    renumbered.write_text(json.dumps(doc))
    res = evaluate_files(gt_json, gt_dir, renumbered, pred_dir, workers=0)
    assert_results_equal(res, expected(reference, "2"))
    assert res["repaired"] == 2 and res["images"] == 2


def test_a_prediction_of_no_ground_truth_image_is_a_problem(reference, tmp_path):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    a, _ = doc["annotations"]
    shutil.copy(tmp_path / "predictions" / a["file_name"], tmp_path / "predictions" / "holiday.png")
    doc["annotations"].append({**a, "image_id": 1, "file_name": "holiday.png"})
    pred_json.write_text(json.dumps(doc))
    (line,) = problems_of(gt_json, gt_dir, pred_json)
    assert line.startswith(f"{pred_json}: the prediction holiday.png (image id 1) is of no ground-truth")


@pytest.fixture(scope="module")
def demo_val8(tmp_path_factory):
    """The first 8 images of the bundled validation set, as a dataset of its own."""
    return demo_val_subset(tmp_path_factory.mktemp("val8"), 8)


def test_readme_predict_then_evaluate_scores_what_evaluate_weights_scores(demo_val8, tmp_path, capsys):
    """`evaluate --weights demo --data DIR` with no size or threshold flags runs the model as
    `predict` does (the checkpoint's 128 px and threshold 0.5, not DETR's 800 px and 0.85):
    its score is the score of `predict`'s files on the same images, as the README pairs them."""
    data = demo_val8
    assert main(["evaluate", "--weights", "demo", "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--workers", "0", "--quiet"]) == 0
    weights, direct_table = capsys.readouterr().out.split("results written")[0].split("\n", 1)
    assert weights.startswith("weights: demo")  # which weights ran, then the table
    direct = json.loads((tmp_path / "ev" / "pq.json").read_text())
    files = ["--gt", str(data / "panoptic.json"), "--gt-dir", str(data / "panoptic"), "--workers", "0",
             "--quiet"]

    # as the README writes it: predict --dataset, then evaluate with --pred-dir the folder predict wrote
    assert main(["predict", "--dataset", str(data), "--out", str(tmp_path / "preds"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", *files, "--pred", str(tmp_path / "preds" / "predictions.json"),
                 "--pred-dir", str(tmp_path / "preds"), "--output", str(tmp_path / "pq.json")]) == 0
    out = capsys.readouterr()
    assert out.out.split("results written")[0] == direct_table and "note:" not in out.err
    via_files = json.loads((tmp_path / "pq.json").read_text())
    assert direct["images"] == 8
    assert direct["All"]["pq"] > 0.3  # the demo model's score, not the 800 px one's (below 0.1)
    for key in ("All", "Things", "Stuff", "per_class", "counts", "images"):
        assert direct[key] == via_files[key], key

    # a folder with one extra file: predict numbers its images 1..N, every id shifts; the
    # pairing follows the file names and the extra prediction is named, not scored
    photos = tmp_path / "photos"
    shutil.copytree(data / "images", photos)
    shutil.copy(photos / "000003.jpg", photos / "00.jpg")
    pred = tmp_path / "p2"
    assert main(["predict", str(photos), "--out", str(pred), "--quiet"]) == 0
    args = ["evaluate", *files, "--pred", str(pred / "predictions.json")]  # PNGs beside the JSON
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "the prediction 00.png (image id 1) is of no ground-truth image" in err[0]
    (pred / "records" / "00.json").unlink()
    (photos / "00.jpg").unlink()
    assert main(["predict", str(photos), "--out", str(pred), "--quiet"]) == 0  # all done: JSON rebuilt
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "pq2.json")]) == 0
    out = capsys.readouterr()
    assert out.out.split("results written")[0] == direct_table
    assert out.err.splitlines() == [
        "note: 8 prediction(s) paired with their ground-truth image by file name: their image ids are not "
        "the ground truth's"]
    assert json.loads((tmp_path / "pq2.json").read_text())["All"] == direct["All"]


def test_integral_floats_are_integers(reference, tmp_path):
    """3.0 where 3 belongs (JSON written from numpy floats) is accepted, as the API accepts it."""
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    for a in doc["annotations"]:
        a["image_id"] = float(a["image_id"])
        for seg in a["segments_info"]:
            seg["id"], seg["category_id"] = float(seg["id"]), float(seg["category_id"])
    pred_json.write_text(json.dumps(doc))
    res = evaluate_files(gt_json, gt_dir, pred_json, None, workers=0)
    assert_results_equal(res, expected(reference, "1"))
