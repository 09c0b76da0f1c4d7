"""eval/evaluate.py, eval/evaluate_model.py and `panoptic-detr evaluate`: the reference results
from files, one clear line per problem of a prediction, a model scored on a synthetic dataset."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from panoptic_detr.cli import main
from panoptic_detr.eval.evaluate import EvaluationError, evaluate_files, format_table
from test_pq import assert_results_equal


def paths(reference, k):
    root = reference / "pq"
    return (root / "gt" / "panoptic_examples.json", root / "gt" / "panoptic_examples",
            root / f"pred_{k}" / "predictions.json", root / f"pred_{k}" / "predictions")


def expected(reference, k):
    return json.loads((reference / "pq" / "expected_pq.json").read_text())[k]


@pytest.mark.parametrize("k", ["1", "2", "3"])
def test_files_equal_coco_panoptic_api(reference, k):
    res = evaluate_files(*paths(reference, k), workers=0)
    assert_results_equal(res, expected(reference, k))
    assert res["images"] == 2


def test_worker_processes_give_the_same_results(reference):
    one = evaluate_files(*paths(reference, "2"), workers=0)
    pool = evaluate_files(*paths(reference, "2"), workers=2, chunk_size=1)
    assert pool == one


def test_table_lists_the_three_averages_and_seen_classes(reference):
    res = evaluate_files(*paths(reference, "1"), workers=0)
    table = format_table(res, res["categories"], per_class=True)
    assert "All       |  28.0   31.7   31.0    20" in table
    rows = [line for line in table.splitlines() if " thing |" in line or " stuff |" in line]
    assert len(rows) == res["All"]["n"] == 20
    assert any(r.startswith("person") for r in rows)


def broken_copy(reference, tmp_path):
    """pred_1 copied into tmp_path, to be broken by the test."""
    _, _, pred_json, pred_dir = paths(reference, "1")
    shutil.copytree(pred_dir, tmp_path / "predictions")
    return tmp_path / "predictions.json", json.loads(pred_json.read_text())


def test_every_problem_is_one_line_naming_the_file(reference, tmp_path):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    a, b = doc["annotations"]
    a["segments_info"].append({"id": 12345, "category_id": 1, "iscrowd": 0})  # absent from the PNG
    a["segments_info"][0]["category_id"] = 9999  # unknown category
    (tmp_path / "predictions" / b["file_name"]).unlink()  # missing PNG
    pred_json.write_text(json.dumps(doc))
    with pytest.raises(EvaluationError) as e:
        evaluate_files(gt_json, gt_dir, pred_json, None, workers=0)
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith(str(tmp_path / "predictions" / a["file_name"])) and "[12345]" in p
               and "in the JSON but not in the PNG" in p for p in problems)
    assert any(a["file_name"] in p and "unknown category_id 9999" in p for p in problems)
    assert any(p == f"{tmp_path / 'predictions' / b['file_name']}: PNG missing" for p in problems)


def test_missing_image_and_ids_absent_from_json(reference, tmp_path):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    a, b = doc["annotations"]
    dropped = a["segments_info"].pop()
    doc["annotations"] = [a]  # no prediction for b's image
    pred_json.write_text(json.dumps(doc))
    with pytest.raises(EvaluationError) as e:
        evaluate_files(gt_json, gt_dir, pred_json, None, workers=0)
    problems = e.value.problems
    assert len(problems) == 2, problems
    assert any(f"no prediction for image id {b['image_id']}" in p and str(pred_json) in p for p in problems)
    assert any(f"[{dropped['id']}] are in the PNG but not in the JSON" in p for p in problems)


# ---------------------------------------------------------------- the command line

def test_cli_writes_the_expected_json(reference, tmp_path, capsys):
    gt_json, gt_dir, pred_json, pred_dir = paths(reference, "3")
    out = tmp_path / "pq.json"
    argv = ["evaluate", "--gt", str(gt_json), "--gt-dir", str(gt_dir), "--pred", str(pred_json),
            "--pred-dir", str(pred_dir), "--output", str(out), "--workers", "1", "--quiet"]
    assert main(argv) == 0
    assert "Things    |" in capsys.readouterr().out
    assert_results_equal(json.loads(out.read_text()), expected(reference, "3"))
    assert main(argv) == 2  # never overwrites without being asked
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_bad_predictions_exit_non_zero_with_one_line_each(reference, tmp_path, capsys):
    gt_json, gt_dir, _, _ = paths(reference, "1")
    pred_json, doc = broken_copy(reference, tmp_path)
    doc["annotations"][0]["segments_info"][0]["category_id"] = 9999
    doc["annotations"][1]["segments_info"][0]["category_id"] = 8888
    pred_json.write_text(json.dumps(doc))
    argv = ["evaluate", "--gt", str(gt_json), "--pred", str(pred_json), "--quiet", "--workers", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum("unknown category_id" in line and line.startswith("error: ") for line in err) == 2
    assert err[-1] == "2 problem(s); no score"


def test_cli_needs_one_complete_mode(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--gt", "a.json"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--gt", "a.json", "--pred", "b.json", "--weights", "demo", "--data", "d"])
    assert "either --gt/--pred" in capsys.readouterr().err


# ---------------------------------------------------------------- a model on a dataset

@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory):
    from panoptic_detr.data.synth import make_dataset

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, 3, seed=1, size=(48, 64), progress=False)
    return root


def test_model_predictions_are_written_in_coco_format_and_scored(synth_dataset, tmp_path):
    from panoptic_detr.eval.evaluate_model import evaluate_model
    from panoptic_detr.predictor import Predictor
    from predict_fixtures import tiny_pretrained

    pre = tiny_pretrained(torch.float64)
    small = {"size": 48, "max_size": 64}
    batched = evaluate_model(Predictor(pre, batch_size=2, **small), synth_dataset,
                             tmp_path / "b", workers=0, progress=False)
    alone = evaluate_model(Predictor(pre, batch_size=1, **small), synth_dataset,
                           tmp_path / "a", workers=0, progress=False)
    gt = json.loads((synth_dataset / "panoptic.json").read_text())
    pred = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert [a["image_id"] for a in pred["annotations"]] == [a["image_id"] for a in gt["annotations"]]
    assert sum(len(a["segments_info"]) for a in pred["annotations"]) > 0
    for a in pred["annotations"]:
        assert (tmp_path / "b" / "predictions" / a["file_name"]).is_file()
    assert batched["images"] == 3 and batched["All"]["n"] > 0
    del batched["predictions"], alone["predictions"]
    assert batched == alone
    rescored = evaluate_files(synth_dataset / "panoptic.json", synth_dataset / "panoptic",
                              tmp_path / "b" / "predictions.json", None, workers=0)
    assert rescored == batched


def test_cli_model_mode(synth_dataset, tmp_path, capsys):
    from predict_fixtures import save_checkpoint, tiny_pretrained

    ckpt = save_checkpoint(tmp_path / "tiny.pth", tiny_pretrained())
    argv = ["evaluate", "--weights", str(ckpt), "--data", str(synth_dataset), "--out", str(tmp_path / "ev"),
            "--size", "48", "--max-size", "64", "--batch-size", "2", "--workers", "0", "--quiet"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "ev" / "pq.json").read_text())
    assert report["images"] == 3 and (tmp_path / "ev" / "predictions.json").is_file()
    assert "All       |" in capsys.readouterr().out
    assert main(argv) == 2  # pq.json exists
    assert main(["evaluate", "--weights", str(tmp_path / "nope.pth"), "--data", str(synth_dataset),
                 "--out", str(tmp_path / "ev2"), "--quiet"]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_model_mode_reports_unreadable_images_and_writes_the_rest(synth_dataset, tmp_path):
    from panoptic_detr.eval.evaluate_model import write_model_predictions
    from panoptic_detr.predictor import Predictor
    from predict_fixtures import tiny_pretrained

    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    gt = json.loads((data / "panoptic.json").read_text())
    broken = data / "images" / gt["images"][1]["file_name"]
    broken.write_bytes(b"not an image")
    predictor = Predictor(tiny_pretrained(), batch_size=2, size=48, max_size=64)
    with pytest.raises(EvaluationError) as e:
        write_model_predictions(predictor, data, tmp_path / "out", progress=False)
    assert len(e.value.problems) == 1 and str(broken) in e.value.problems[0]
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"]
    assert [a["image_id"] for a in written] == [gt["images"][0]["id"], gt["images"][2]["id"]]
    with pytest.raises(FileExistsError):
        write_model_predictions(predictor, data, tmp_path / "out", progress=False)


def test_model_mode_a_failing_image_costs_only_itself(synth_dataset, tmp_path, capsys, monkeypatch):
    """One image the network fails on (as a huge image running out of memory does) costs that
    image only, in a batch with others too: the rest are written, the run reports it, exit 1."""
    from panoptic_detr.predictor import Predictor
    from predict_fixtures import save_checkpoint, tiny_pretrained

    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    gt = json.loads((data / "panoptic.json").read_text())
    bad = data / "images" / gt["images"][1]["file_name"]
    Image.new("RGB", (33, 33), (10, 200, 10)).save(bad, format="JPEG")  # decodes fine
    predict_arrays = Predictor.predict_arrays

    def fails_on_the_bad_one(self, arrays, inputs=None):
        if any(a.shape[:2] == (33, 33) for a in arrays):
            raise RuntimeError("out of memory\n(details)")
        return predict_arrays(self, arrays, inputs)

    monkeypatch.setattr(Predictor, "predict_arrays", fails_on_the_bad_one)
    ckpt = save_checkpoint(tmp_path / "tiny.pth", tiny_pretrained())
    code = main(["evaluate", "--weights", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--size", "48", "--max-size", "64", "--batch-size", "3", "--workers", "0", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {bad}: prediction failed (RuntimeError: out of memory)", "1 problem(s); no score"]
    written = json.loads((tmp_path / "ev" / "predictions.json").read_text())["annotations"]
    assert [a["image_id"] for a in written] == [gt["images"][0]["id"], gt["images"][2]["id"]]
    for a in written:
        assert (tmp_path / "ev" / "predictions" / a["file_name"]).is_file()


def test_evaluate_on_files_never_loads_torch(reference):
    """The files path stays light (benchmarks/bench_cli.py: peak RSS of the process tree): a
    module that imports torch, pulled in by the command, would be loaded in every worker too."""
    import subprocess
    import sys

    gt_json, _, pred_json, _ = paths(reference, "1")
    code = ("import sys; from panoptic_detr.cli import main; "
            f"code = main(['evaluate', '--gt', {str(gt_json)!r}, '--pred', {str(pred_json)!r}, '--quiet']); "
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 False"
