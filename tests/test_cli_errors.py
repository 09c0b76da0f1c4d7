"""The command line's one error path: out-of-range options, devices, weights, configs and I/O
errors are one line with the right exit code in every command, and the parser is light."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from panoptic_detr import __version__
from panoptic_detr.cli import build_parser, main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(("override", "key", "value"), [
    ("optim.lr=-1", "optim.lr", "-1.0"),
    ("optim.lr=nan", "optim.lr", "nan"),
    ("optim.weight_decay=-0.1", "optim.weight_decay", "-0.1"),
    ("steps=-5", "steps", "-5"),
    ("batch_size=0", "batch_size", "0"),
    ("eval_threshold=1", "eval_threshold", "1.0"),
])
def test_train_refuses_a_config_value_out_of_range(tmp_path, capsys, override, key, value):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), override, f"out_dir={out}"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {cfg}: {key}: {value} is out of range (expected ")
    assert not out.exists()


def test_train_keeps_the_documented_zeros(tmp_path):
    from panoptic_detr.train.config import config_from_dict

    cfg = config_from_dict({}, ["steps=0", "optim.lr_backbone=0", "optim.clip_max_norm=0", "loss.semantic=0"])
    assert (cfg.steps, cfg.optim.lr_backbone) == (0, 0.0)


def test_config_types_check_their_ranges_in_the_python_api():
    from panoptic_detr.train.config import ConfigError, OptimSection, SynthSection, TrainConfig

    with pytest.raises(ConfigError, match="lr: nan is out of range"):
        OptimSection(lr=float("nan"))
    with pytest.raises(ConfigError, match="crowd_prob: 5 is out of range"):
        SynthSection(crowd_prob=5)
    with pytest.raises(ConfigError, match="steps: -5 is out of range"):
        TrainConfig(steps=-5)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--n", "-3"], "--n: -3"),
    (["--n", "3", "--crowd-prob", "5"], "--crowd-prob: 5"),
    (["--n", "3", "--crowd-prob", "nan"], "--crowd-prob: nan"),
])
def test_synth_refuses_counts_and_probabilities_out_of_range(tmp_path, capsys, argv, flag):
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--out", str(out), *argv])
    assert exit_.value.code == 2
    line = _one_line(capsys)
    assert f"argument {flag} is out of range" in line
    assert not out.exists()


def test_make_dataset_checks_its_parameters_before_writing(tmp_path):
    from panoptic_detr.data.synth import SynthError, make_dataset

    with pytest.raises(SynthError, match=r"n: -3 is out of range \(expected a whole number of images >= 1\)"):
        make_dataset(tmp_path / "a", -3, progress=False)
    with pytest.raises(SynthError, match="crowd_prob: 5"):
        make_dataset(tmp_path / "b", 2, crowd_prob=5, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv", [
    ["check", "x", "--workers", "0"],
    ["build-gt", "--instances", "i.json", "--images", "im", "--out", "o", "--workers", "-1"],
    ["evaluate", "--gt", "g.json", "--pred", "p.json", "--workers", "-1"],
])
def test_count_flags_are_checked_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    low = 0 if argv[0] == "evaluate" else 1  # evaluate --workers 0: in this process
    assert f"is out of range (expected a whole number >= {low})" in _one_line(capsys)


@pytest.mark.parametrize("argv", [
    ["predict", "x.jpg", "--out", "o", "--batch-size", "0"],
])
def test_count_flags_of_every_command_are_checked_before_it_runs(tmp_path, capsys, argv):
    assert main(argv) == 2
    assert _one_line(capsys).endswith("is out of range (expected a whole number >= 1)")


@NO_CUDA
@pytest.mark.parametrize("argv", [
    ["explain", "x.jpg", "--out", "o"],
    ["evaluate", "--weights", "demo", "--data", "d"],
    ["demo"],
    ["predict", "x.jpg", "--out", "o"],
    ["train", "--config", "c.yaml"],
])
def test_a_missing_gpu_is_one_line_in_every_command(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\n")
    assert main([*argv, "--device", "cuda"]) == 2
    assert _one_line(capsys) == "error: --device cuda: no CUDA device is available here; use --device cpu"


@NO_CUDA
def test_a_config_device_that_is_not_there_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny}\ndevice: cuda\n")
    assert main(["train", "--config", str(cfg), f"out_dir={tmp_path / 'run'}"]) == 2
    assert "no CUDA device is available here" in _one_line(capsys)


def test_train_without_config_says_so(capsys):
    assert main(["train"]) == 2
    assert _one_line(capsys).startswith("error: train needs --config FILE.yaml")


def test_train_reports_an_unreachable_init_before_checking_the_data(tmp_path, monkeypatch, capsys):
    """An original checkpoint that cannot be downloaded: one line naming init=, before the
    dataset is checked (which would take minutes on a real dataset)."""
    from panoptic_detr.train import loop

    def offline(url, dest, hash_prefix=None):
        raise OSError("network is unreachable")

    def no_check(*a, **k):
        raise AssertionError("the dataset was checked before the weights")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(loop, "_check_data", no_check)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndata: {{train: {tmp_path / 'data'}}}\ndevice: cpu\n")
    assert main(["train", "--config", str(cfg), "init=detr_r50_panoptic", f"out_dir={tmp_path / 'run'}"]) == 1
    line = _one_line(capsys)
    assert line.startswith("error: could not download") and "network is unreachable" in line
    assert "init=PATH" in line and "--weights" not in line


def test_train_with_a_missing_init_file_says_so_first(tmp_path, monkeypatch, capsys):
    from panoptic_detr.train import loop

    monkeypatch.setattr(loop, "_check_data", lambda *a, **k: pytest.fail("dataset checked first"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{preset: tiny}}\ndata: {{train: {tmp_path / 'data'}}}\ndevice: cpu\n")
    missing = tmp_path / "nope.pt"
    assert main(["train", "--config", str(cfg), f"init={missing}", f"out_dir={tmp_path / 'r'}"]) == 1
    assert _one_line(capsys) == (f"error: init={missing}: no such file (expected a checkpoint "
                                 "path or a name: demo, " + _names() + ")")


def _names() -> str:
    from panoptic_detr.model.weights import WEIGHTS

    return ", ".join(WEIGHTS)


def test_a_killed_runs_temp_files_are_removed_at_the_next_start(tmp_path):
    from panoptic_detr.train.config import config_from_dict
    from panoptic_detr.train.loop import train

    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".checkpoint_last.pt.k3j2_x.tmp", run / ".metrics.jsonl.abc.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    cfg = config_from_dict({
        "model": {"preset": "tiny"}, "steps": 1, "batch_size": 2, "out_dir": str(run), "device": "cpu",
        "data": {"train": str(tmp_path / "data"), "synth": {"n_train": 2, "size": 32}, "scales": [32],
                 "max_size": 32, "crop_scales": [32], "crop_min": 24, "crop_max": 32},
    })
    train(cfg, progress=False)
    assert (run / "checkpoint_last.pt").is_file()
    assert not any(p.exists() for p in stale) and not list(run.glob(".*.tmp"))


def test_an_output_error_escaping_a_command_is_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["synth", "--out", str(not_a_folder), "--n", "1"]) == 1
    assert _one_line(capsys) == f"error: {not_a_folder}: exists and is not a folder"


def test_checkpoint_reasons_are_cut_between_words():
    from panoptic_detr.checkpoint import _reason

    words = " ".join(f"word{i}" for i in range(80))
    reason = _reason(ValueError(words))
    assert len(reason) <= 200 and reason.endswith(" ...")
    assert reason[: -len(" ...")].split()[-1] in words.split()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--n", "x", "--out", "o"])
    assert exit_.value.code == 2
    assert _one_line(capsys).startswith("panoptic-detr synth: error: argument --n: 'x' is not a whole number")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"panoptic-detr {__version__}"


def test_the_parser_builds_without_torch():
    code = ("import sys; from panoptic_detr.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'panoptic_detr.model', 'PIL', 'numpy') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


PROGRESS_COMMANDS = [
    ["demo"], ["predict", "x", "--out", "o"], ["evaluate"], ["synth", "--out", "o", "--n", "1"],
    ["check", "d"], ["train"], ["build-gt", "--instances", "i", "--images", "m", "--out", "o"],
    ["convert", "panoptic-to-semantic", "--panoptic", "p", "--out", "o"],
]


@pytest.mark.parametrize("argv", PROGRESS_COMMANDS, ids=lambda a: a[0])
def test_every_command_with_progress_takes_quiet(argv):
    assert build_parser().parse_args([*argv, "--quiet"]).quiet is True
    assert build_parser().parse_args(argv).quiet is False


@pytest.mark.parametrize("command", [["demo"], ["train"]])
def test_the_old_progress_spelling_still_works_unlisted(command, capsys):
    parser = build_parser()
    assert parser.parse_args([*command, "--no-progress"]).quiet is True
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--help"])
    assert "--no-progress" not in capsys.readouterr().out


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "ds"), "--n", "2", "--size", "32x32"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "wrote 2 images" in captured.out


def test_train_refuses_an_unknown_pixel_assignment_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "eval_pixel_assignment=logit", f"out_dir={out}"]) == 2
    assert _one_line(capsys) == (f"error: {cfg}: eval_pixel_assignment: must be one of ('mask', 'score'), "
                                 "got 'logit'")
    assert not out.exists()
