"""Inference settings: one precedence rule (caller > checkpoint > DETR's defaults), range checks
before anything loads, and every command that runs a model reading them the same way."""

from __future__ import annotations

import json
import shutil

import pytest

from demo_subsets import demo_val_subset
from panoptic_detr.cli import main
from panoptic_detr.demo import DEMO_SCENES
from panoptic_detr.model import DETRPanoptic
from panoptic_detr.predictor import Predictor
from panoptic_detr.settings import DETR_DEFAULTS, InferenceSettings, SettingsError
from predict_fixtures import CATEGORIES, tiny_pretrained

# ---- precedence --------------------------------------------------------------------------------


def test_caller_over_checkpoint_over_defaults():
    advice = {"threshold": 0.5, "size": 128.0, "max_size": 160, "dtype": "bfloat16"}
    s = InferenceSettings.resolve({"size": 96, "threshold": None}, advice)
    assert (s.threshold, s.size, s.max_size) == (0.5, 96, 160)  # None: not given
    assert s.dtype == "float32"  # a choice of the machine: a checkpoint does not recommend it
    assert InferenceSettings.resolve({}, {}) == DETR_DEFAULTS == InferenceSettings()
    assert InferenceSettings().prepare is True
    with pytest.raises(SettingsError, match="unknown inference setting.*batch_size"):
        InferenceSettings.resolve({"batch_size": 2})


def test_predictor_resolves_settings_with_the_same_rule():
    pre = tiny_pretrained()
    assert Predictor(pre).settings == DETR_DEFAULTS
    pre.inference = {"size": 64, "max_size": 96, "threshold": 0.6}
    assert Predictor(pre).settings == InferenceSettings(size=64, max_size=96, threshold=0.6)
    given = Predictor(pre, size=32, threshold=0.9, prepare=False)
    assert given.settings == InferenceSettings(size=32, max_size=96, threshold=0.9, prepare=False)
    assert (given.size, given.max_size, given.threshold) == (32, 96, 0.9)  # read-only views
    with pytest.raises(AttributeError):
        given.threshold = 0.1
    # complete settings are used as they are (the checkpoint's are not read); single ones on top
    mine = InferenceSettings(size=48, max_size=64)
    assert Predictor(pre, mine).settings == mine
    assert Predictor(pre, mine, threshold=0.3).settings == mine.replace(threshold=0.3)


def test_predictor_around_a_bare_model_and_its_categories():
    from panoptic_detr.structures import Categories

    pre = tiny_pretrained()
    cats = Categories(CATEGORIES, num_classes=pre.config.num_classes)
    p = Predictor(pre.model, categories=cats, size=64, max_size=96, threshold=0.5)
    assert p.categories is cats and p.model is pre.model
    with pytest.raises(ValueError, match="categories"):
        Predictor(pre.model)


@pytest.mark.parametrize("given, words", [
    ({"threshold": 1.0}, "threshold must be"), ({"threshold": -0.1}, "threshold must be"),
    ({"threshold": float("nan")}, "threshold must be"), ({"size": 0}, "size must be"),
    ({"size": 12.5}, "size must be"), ({"max_size": 0}, "max_size must be"),
    ({"size": 100, "max_size": 50}, r"max_size \(50\) must be at least size \(100\)"),
    ({"stuff_merge": "mean"}, "stuff_merge must be"), ({"mask_chunk": 0}, "mask_chunk must be"),
    ({"pixel_assignment": "logit"}, "pixel_assignment must be one of mask, score"),
    ({"dtype": "float16"}, "dtype must be one of"), ({"prepare": "yes"}, "prepare must be"),
    ({"batched_network": 1.5}, "batched_network must be"), ({"colour": "red"}, "unknown"),
])
def test_bad_settings_raise_before_any_weights_load(given, words):
    with pytest.raises(SettingsError, match=words):  # the file does not exist: nothing was read
        Predictor("no_such_checkpoint.pth", **given)
    assert issubclass(SettingsError, ValueError)


def test_a_size_above_the_default_cap_is_fine_when_the_checkpoint_allows_it():
    pre = tiny_pretrained()
    pre.inference = {"size": 1500, "max_size": 2000}
    assert Predictor(pre, size=1800).settings.size == 1800


# ---- the command line --------------------------------------------------------------------------


@pytest.fixture
def small_val(tmp_path):
    """The first 2 images of the bundled validation set, as a dataset."""
    return demo_val_subset(tmp_path / "val", 2)


def _commands(tmp_path, data):
    scene = str(sorted(DEMO_SCENES.glob("*.jpg"))[0])
    return {
        "predict": ["predict", scene, "--out", str(tmp_path / "p")],
        "evaluate": ["evaluate", "--weights", "demo", "--data", str(data), "--out", str(tmp_path / "e"),
                     "--workers", "0"],
        "explain": ["explain", scene, "--out", str(tmp_path / "x")],
        "demo": ["demo", "--out", str(tmp_path / "d"), "--no-progress"],
    }


@pytest.mark.parametrize("flags, words", [
    (["--threshold", "2"], "threshold must be"), (["--size", "0"], "size must be"),
    (["--max-size", "-3"], "max_size must be"),
])
def test_a_bad_setting_is_one_error_line_and_exit_2_before_anything_runs(tmp_path, small_val, capsys,
                                                                         flags, words):
    for name, argv in _commands(tmp_path, small_val).items():
        assert main([*argv, *flags, "--quiet"] if name in ("predict", "evaluate") else [*argv, *flags]) == 2
        out = capsys.readouterr()
        err = out.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, err)
        assert "weights:" not in out.out, name  # refused before it says what it would run
    assert not any(tmp_path.glob("[pexd]"))  # no output folder was started


@pytest.mark.parametrize("options, words", [
    (["--stuff-from", "model:demo@2"], "threshold must be"),
    (["--stuff-from", "model:demo", "--model-size", "100", "50"], "max_size (50) must be at least"),
])
def test_build_gt_model_source_bad_setting_exits_2(tmp_path, capsys, options, words):
    (tmp_path / "images").mkdir()
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "annotations": [],
                                     "categories": [{"id": 1, "name": "ball", "isthing": 1}]}))
    argv = ["build-gt", "--instances", str(instances), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "gt"), *options]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]
    assert not (tmp_path / "gt").exists()


def test_build_gt_model_source_settings_are_checked_as_predictors_are(tmp_path):
    from panoptic_detr.gt.sources import open_source

    with pytest.raises(SettingsError, match="threshold must be"):
        open_source("model:demo@2")
    with pytest.raises(SettingsError, match="size must be"):
        open_source("model:demo", size=0, max_size=0)
    source = open_source("model:demo", size=64, max_size=96)
    assert (source._load().size, source._load().max_size, source._load().threshold) == (64, 96, 0.3)


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain", "demo"])
def test_help_says_the_checkpoints_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--threshold", 0.85), ("--size", 800), ("--max-size", 1333)):
        assert flag in text
        assert f"default: the checkpoint's, else {default}" in text


def test_build_gt_help_does_not_claim_a_fixed_model_size(capsys):
    with pytest.raises(SystemExit):
        main(["build-gt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the checkpoint's, else 800 1333" in text and "default 800 1333" not in text


# ---- one model path for every way of running a model ------------------------------------------


def test_every_command_runs_the_same_model_path_by_default(tmp_path, small_val, monkeypatch):
    """predict, evaluate --weights, demo, explain, build-gt's model source and the Python API
    all run the demo checkpoint with the same settings, the model prepared for inference."""
    import panoptic_detr.demo as demo_module
    from panoptic_detr.gt.sources import open_source

    built: list[Predictor] = []
    prepared: set[int] = set()
    init, prepare = Predictor.__init__, DETRPanoptic.prepare_for_inference

    def record_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    def record_prepare(self, *args, **kwargs):
        prepared.add(id(self))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__init__", record_init)
    monkeypatch.setattr(DETRPanoptic, "prepare_for_inference", record_prepare)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    shutil.copy(sorted(DEMO_SCENES.glob("*.jpg"))[0], scenes)
    monkeypatch.setattr(demo_module, "DEMO_SCENES", scenes)
    monkeypatch.setattr(demo_module, "DEMO_VAL", small_val)

    api = Predictor("demo")
    for name, argv in _commands(tmp_path, small_val).items():
        assert main([*argv, "--quiet"] if name in ("predict", "evaluate") else argv) == 0, name
    open_source("model:demo")._load()
    assert len(built) == 6
    assert api.settings == InferenceSettings(threshold=0.3, size=128, max_size=160,  # the checkpoint's
                                             overlap_threshold=0.5, pixel_assignment="score")
    for p in built:
        assert p.settings == api.settings and id(p.model) in prepared
