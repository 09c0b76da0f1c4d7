"""ONNX export and the runtimes behind Predictor: ONNX Runtime / OpenVINO against torch.

One export of the bundled demo model (built through the cache, as `--runtime onnxruntime` builds
it, into a temporary torch hub folder) serves every test: the dynamo exporter takes about half
a minute, the rest runs in seconds.

The bound "float32 noise": two correct float32 implementations of one network differ by the
rounding of their different orders of summation (convolution algorithms, matrix-product
blocking, softmax), growing with each output's magnitude and the network's depth. Torch itself,
run channels-last (as `Predictor` runs it) vs contiguous, differs on the padded batch below by
up to 5.5e-5 of an output's largest magnitude (1.8e-6 on the single image); ONNX Runtime differs
from torch by up to 2.6e-5 (7.7e-7). The bound: 1e-4 of each output's largest magnitude (at
least 1), about twice torch's own layout noise; a wrong padding mask, resize or weight moves
outputs by more than 1e-2 of their scale.
"""

from __future__ import annotations

import json
import os
import weakref

import numpy as np
import pytest
import torch

from panoptic_detr.cli import main
from panoptic_detr.data.images import load_image, preprocess
from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.demo import DEMO_SCENES
from panoptic_detr.export import cache
from panoptic_detr.export.graphs import DETECT_INPUTS, DETECT_OUTPUTS, MASK_INPUTS, DetectGraph, MaskGraph
from panoptic_detr.export.sessions import (
    PROVIDERS_ENV,
    ExportedModel,
    OnnxRuntimeSession,
    onnxruntime_providers,
)
from panoptic_detr.loading import load_pretrained
from panoptic_detr.predictor import Predictor
from panoptic_detr.settings import SettingsError
from panoptic_detr.structures import PaddedBatch

RELATIVE_BOUND = 1e-4
SCENES = sorted(DEMO_SCENES.glob("*.jpg"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """torch hub's folder, where the exports are cached, in a temporary folder."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path_factory.mktemp("hub")))
    yield
    torch.hub.set_dir(before)


@pytest.fixture(scope="module")
def ort_predictor(hub):
    return Predictor("demo", runtime="onnxruntime")


@pytest.fixture(scope="module")
def torch_predictor():
    return Predictor("demo")


@pytest.fixture(scope="module")
def net():
    """The demo model as the export holds it (float32, batch norms folded)."""
    return load_pretrained("demo").model.eval().prepare_for_inference(channels_last=False)


def assert_within_noise(name, got, ref):
    ref = ref.float()
    err = (torch.as_tensor(got).float() - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= RELATIVE_BOUND * scale, f"{name}: max |onnx - torch| {err:.3g} at scale {scale:.3g}"


def scene_batch(sizes):
    """The first scenes resized to `sizes` (shortest sides), as one padded batch."""
    images = [preprocess(load_image(p), s, 4 * s) for p, s in zip(SCENES, sizes, strict=False)]
    return PaddedBatch.from_images(images)


@pytest.mark.parametrize("sizes", [(128, 96), (80,)], ids=["padded-batch-of-2", "one-image-other-size"])
def test_every_output_within_float32_noise(ort_predictor, net, sizes):
    """A padded batch of 2 gives torch's padded-batch outputs, and a batch of one at another size
    goes through the same graphs (dynamic batch, height, width and kept queries)."""
    folder = ort_predictor.model.folder
    batch = scene_batch(sizes)
    with torch.no_grad():
        ref = DetectGraph(net)(batch.images, batch.mask)
    got = OnnxRuntimeSession(folder / "detect.onnx").run(dict(zip(DETECT_INPUTS, (batch.images, batch.mask),
                                                                  strict=True)))
    assert got[0].shape[:2] == (len(sizes), net.config.num_queries)
    for name, a, b in zip(DETECT_OUTPUTS, got, ref, strict=True):
        assert a.shape == tuple(b.shape), name
        assert_within_noise(name, a, b)
    masks = OnnxRuntimeSession(folder / "mask.onnx")
    for i in range(len(sizes)):
        for kept in (1, 7):  # any number of kept queries
            inputs = (ref[2][i, :kept], *(t[i : i + 1] for t in ref[3:]))
            with torch.no_grad():
                want = MaskGraph(net)(*inputs)
            got_masks = masks.run(dict(zip(MASK_INPUTS, inputs, strict=True)))[0]
            assert got_masks.shape == tuple(want.shape)
            assert_within_noise("masks", got_masks, want)


def test_exported_model_masks_equal_torch_predict_masks(ort_predictor, net):
    """predict_masks of the runtime, chunked or not, gives the torch model's masks."""
    batch = scene_batch((96, 128))
    queries = [torch.tensor([3, 0, 5]), torch.tensor([], dtype=torch.long)]
    with torch.no_grad():
        want = net.predict_masks(net.detect(batch), queries)
    model = ort_predictor.model
    for chunk in (None, 2, "auto"):
        got = model.predict_masks(model.detect(batch), queries, chunk=chunk)
        assert got[1].shape == want[1].shape == (0, *want[0].shape[-2:])
        assert_within_noise("masks", got[0], want[0])


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_one_image_of_a_detection_gives_its_masks(ort_predictor, net, runtime):
    """`Detection.one(i)` / `ExportedDetection.one(i)` (what the server caches of a request
    that ran in a batch) give image i's predictions and, later, exactly its masks in the batch."""
    model = net if runtime == "torch" else ort_predictor.model
    batch = scene_batch((96, 128))
    queries = [torch.tensor([3, 0, 5]), torch.tensor([1, 4])]
    with torch.no_grad():
        det = model.detect(batch)
        want = model.predict_masks(det, queries)
        for i in range(2):
            one = det.one(i)
            assert torch.equal(one.pred_logits, det.pred_logits[i : i + 1])
            assert torch.equal(model.predict_masks(one, [queries[i]])[0], want[i])
            assert one.one(0) is one


def same_segments(a, b):
    assert torch.equal(a.id_map, b.id_map)
    assert len(a.segments_info) == len(b.segments_info)
    for sa, sb in zip(a.segments_info, b.segments_info, strict=True):
        assert {k: v for k, v in sa.items() if k != "score"} == {k: v for k, v in sb.items() if k != "score"}
        assert abs(sa["score"] - sb["score"]) < 1e-4


def test_onnxruntime_segments_equal_torch_segments(ort_predictor, torch_predictor):
    for path in SCENES:
        same_segments(ort_predictor.predict(path), torch_predictor.predict(path))


def test_one_by_one_path_equals_one_image_at_a_time(ort_predictor):
    both = Predictor(ort_predictor.pretrained, ort_predictor.settings, batch_size=2).predict_batch(SCENES[:2])
    for path, result in zip(SCENES[:2], both, strict=True):
        alone = ort_predictor.predict(path)
        assert torch.equal(result.id_map, alone.id_map)
        assert result.segments_info == alone.segments_info


def test_the_export_is_built_once_and_reused(ort_predictor, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(cache, "write_graphs", fail)
    again = Predictor("demo", runtime="onnxruntime")
    assert again.model.folder == ort_predictor.model.folder
    meta = json.loads((again.model.folder / "model.json").read_text())
    assert meta["weights_sha256"] and meta["exporter"]["kind"] in ("dynamo", "torchscript")
    assert [c["id"] for c in meta["categories"]] == [c["id"] for c in again.categories.items]


def test_an_exported_runtime_frees_the_torch_weights(ort_predictor, monkeypatch):
    """Once the export is found the Predictor holds no torch model (R50: 172 MB of its memory)."""
    from panoptic_detr import predictor as predictor_module

    read = []

    def spy(*args, **kwargs):
        pretrained = real(*args, **kwargs)
        read.append(weakref.ref(pretrained.model))
        return pretrained

    real = predictor_module.load_pretrained
    monkeypatch.setattr(predictor_module, "load_pretrained", spy)
    fresh = Predictor("demo", runtime="onnxruntime")
    assert fresh.pretrained.released and read[0]() is None  # freed, not only dropped
    assert fresh.model.folder == ort_predictor.model.folder


CACHED_CHECK = """
import json, sys
import torch
from panoptic_detr import loading
from panoptic_detr.predictor import Predictor

def no_model(*args, **kwargs):
    raise AssertionError("a torch model was built")

torch.hub.set_dir(sys.argv[1])
loading.build_model = no_model
predictor = Predictor(sys.argv[2], runtime="onnxruntime")
result = predictor.predict(sys.argv[3])
print(json.dumps({"torchvision": "torchvision" in sys.modules, "folder": str(predictor.model.folder),
                  "segments": result.segments_info, "released": predictor.pretrained.released}))
"""


def test_a_cached_export_runs_without_building_the_torch_model(ort_predictor, tmp_path):
    """Found through the `files/` index (a copy of the checkpoint: the same bytes), the export
    runs in a process that builds no torch model and never imports torchvision; its segments
    are the exported runtime's."""
    import shutil
    import subprocess
    import sys

    from panoptic_detr.loading import demo_path

    copy = tmp_path / "copy of demo.pt"
    shutil.copyfile(demo_path(), copy)
    run = subprocess.run([sys.executable, "-c", CACHED_CHECK, torch.hub.get_dir(), str(copy), str(SCENES[0])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["folder"] == str(ort_predictor.model.folder) and found["released"]
    assert not found["torchvision"]
    assert found["segments"] == json.loads(json.dumps(ort_predictor.predict(SCENES[0]).segments_info))


def test_the_file_index_is_keyed_by_the_bytes_and_the_architecture(ort_predictor, tmp_path):
    demo = load_pretrained("demo", build=False)
    assert demo.released and demo.file is not None
    entry = cache._file_entry(demo)
    assert entry.read_text().strip() == cache.weights_digest(load_pretrained("demo"))
    other = tmp_path / "other.pt"
    other.write_bytes(demo.file.read_bytes())  # same bytes: same entry
    assert cache._file_entry(load_pretrained(other, build=False)) == entry
    demo.config = demo.config.with_overrides(dropout=0.5)  # another architecture: another entry
    assert cache._file_entry(demo) != entry


def test_a_checkpoint_changed_since_it_was_read_is_not_looked_up(ort_predictor, tmp_path):
    """The index would answer for the new bytes while the categories came from the old ones:
    the change is refused, as reading the weights again refuses it."""
    from panoptic_detr.loading import WeightsError, demo_path

    copy = tmp_path / "demo.pt"
    copy.write_bytes(demo_path().read_bytes())
    read = load_pretrained(copy, build=False)
    assert read.file_unchanged() and cache._file_entry(read).is_file()  # indexed by the bytes
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not read.file_unchanged()
    with pytest.raises(WeightsError, match="changed"):
        cache.weights_digest(read)


def test_an_index_that_cannot_be_written_only_costs_time(ort_predictor, tmp_path, monkeypatch):
    """A cache folder this user cannot write (filled by another): the hash is taken from the
    tensors, and the export found as before."""
    (tmp_path / "not a folder").write_text("")
    monkeypatch.setattr(cache, "_file_entry", lambda p: tmp_path / "not a folder" / "files" / "key")
    fresh = Predictor("demo", runtime="onnxruntime")
    assert fresh.model.folder == ort_predictor.model.folder


def test_predictors_made_from_a_released_pretrained(ort_predictor, torch_predictor, monkeypatch):
    """Another exported one finds the export without reading the weights again; a torch one
    reads them again from the file and gives the torch results."""
    fresh = Predictor("demo", runtime="onnxruntime")
    monkeypatch.setattr(fresh.pretrained, "_reload", None)  # reading them again would fail
    other = Predictor(fresh.pretrained, fresh.settings.replace(threshold=0.5))
    assert other.model.folder == fresh.model.folder and fresh.pretrained.released
    assert other.model.runs_on == fresh.model.runs_on == torch.device("cpu")
    # where the weights were when released is kept (a CUDA one stays on CUDA), not assumed
    monkeypatch.setattr(fresh.pretrained, "device", torch.device("meta"))
    with pytest.raises(SettingsError, match="CPU or a CUDA device, not meta"):
        Predictor(fresh.pretrained, fresh.settings)
    monkeypatch.undo()
    again = Predictor(fresh.pretrained, runtime="torch")
    assert not fresh.pretrained.released
    for path in SCENES[:2]:
        same_segments(again.predict(path), torch_predictor.predict(path))


def test_explain_on_an_exported_runtime_says_why_not(ort_predictor):
    from panoptic_detr.explain import explain

    for threshold in (None, 0.5):  # the predictor itself, one made from its Pretrained
        with pytest.raises(SettingsError, match="torch model only"):
            explain(ort_predictor, SCENES[0], threshold=threshold)
    assert ort_predictor.pretrained.released


def test_predict_command_with_onnxruntime_writes_torchs_segments(ort_predictor, tmp_path):
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", *map(str, SCENES), "--out", str(tmp_path / runtime), "--runtime", runtime,
                     "--quiet"]) == 0
    for path in SCENES:
        a, b = (read_panoptic_png(tmp_path / r / f"{path.stem}.png") for r in ("torch", "onnxruntime"))
        assert np.array_equal(a, b), path.name


OPENVINO_CHECK = """
import json, sys
import torch
from panoptic_detr.demo import DEMO_SCENES
from panoptic_detr.gt.instances import panoptic_to_semantic
from panoptic_detr.predictor import Predictor

torch.hub.set_dir(sys.argv[1])
ref, ov = Predictor("demo"), Predictor("demo", runtime="openvino", dtype=sys.argv[2])
same, agree, total = True, 0, 0
scenes = sorted(DEMO_SCENES.glob("*.jpg"))
first = ov.predict(scenes[0])
for path in scenes:
    a, b = ref.predict(path), ov.predict(path)
    strip = lambda r: [{k: v for k, v in s.items() if k != "score"} for s in r.segments_info]
    same &= torch.equal(a.id_map, b.id_map) and strip(a) == strip(b)
    cat_a = panoptic_to_semantic(a.id_map.numpy(), a.segments_info)
    cat_b = panoptic_to_semantic(b.id_map.numpy(), b.segments_info)
    agree, total = agree + int((cat_a == cat_b).sum()), total + cat_a.size
# the graphs' memory is handed back after every image (OpenVINOSession.release): a scene run again
# after the others gives exactly its first result
again = ov.predict(scenes[0])
repeat = torch.equal(first.id_map, again.id_map) and first.segments_info == again.segments_info
print(json.dumps({"same": bool(same), "agreement": agree / total, "folder": str(ov.model.folder),
                  "repeat": bool(repeat)}))
"""


def openvino_against_torch(dtype: str) -> dict:
    """OpenVINO's segments on the bundled scenes against torch float32's, in a process of its
    own: OpenVINO's bfloat16 kernels (AMX) and its thread pool stay out of the test process,
    where a later test's long subprocess wait was seen to end in a SIGSEGV (si_code SI_KERNEL)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", OPENVINO_CHECK, torch.hub.get_dir(), dtype],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_openvino_float32_segments_equal_torch_segments(ort_predictor):
    pytest.importorskip("openvino")
    found = openvino_against_torch("float32")
    assert found["folder"] == str(ort_predictor.model.folder)  # one export for both runtimes
    assert found["same"] and found["repeat"]
    # OpenVINO kept its compiled graphs beside the export; loaded from there, the same segments
    assert any((ort_predictor.model.folder / cache.OPENVINO_CACHE).iterdir())
    assert openvino_against_torch("float32")["same"]


def test_openvino_compile_cache_only_where_it_can_be_written(tmp_path):
    from panoptic_detr.export.sessions import _writable

    assert _writable(tmp_path / "new") and (tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("")
    assert not _writable(tmp_path / "file") and not _writable(tmp_path / "file" / "below")


def test_openvino_bfloat16_nearly_the_float32_segmentation(ort_predictor):
    """As torch's bfloat16 (tests/test_predictor.py): >= 97 % of pixels with the float32 category."""
    pytest.importorskip("openvino")
    found = openvino_against_torch("bfloat16")
    assert found["agreement"] >= 0.97 and found["repeat"]


def test_runtime_settings_are_checked_before_anything_loads():
    with pytest.raises(SettingsError, match="runtime must be one of"):
        Predictor("demo", runtime="tensorrt")
    with pytest.raises(SettingsError, match="float32 only"):
        Predictor("demo", runtime="onnxruntime", dtype="bfloat16")
    with pytest.raises(SettingsError, match="attention maps"):
        ExportedModel.detect(object(), scene_batch((64,)), return_attention=True)


def test_onnxruntime_providers_for_each_device(monkeypatch, tmp_path):
    """The CPU's on a CPU; CUDA's on device N (then the CPU's); the ones $PANOPTIC_DETR_ORT_PROVIDERS
    names (TensorRT with its engine cache beside the graphs); one line when they are missing."""
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv(PROVIDERS_ENV, raising=False)
    assert onnxruntime_providers(torch.device("cpu"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnxruntime_providers(torch.device("cuda:1"), gpu) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    monkeypatch.setenv(PROVIDERS_ENV, "TensorrtExecutionProvider, CUDAExecutionProvider")
    trt, cuda, cpu = onnxruntime_providers(torch.device("cuda"), gpu, tmp_path)
    assert trt == ("TensorrtExecutionProvider", {"device_id": 0, "trt_engine_cache_enable": True,
                                                 "trt_engine_cache_path": str(tmp_path / "tensorrt")})
    assert (cuda, cpu) == (("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider")
    with pytest.raises(SettingsError, match=r"needs TensorrtExecutionProvider, CUDAExecutionProvider.*"
                                            r"it has CPUExecutionProvider\): pip install onnxruntime-gpu"):
        onnxruntime_providers(torch.device("cuda"), ["CPUExecutionProvider"])
    with pytest.raises(SettingsError, match="CPU or a CUDA device, not mps"):
        onnxruntime_providers(torch.device("mps"), gpu)


def test_a_cuda_device_without_onnxruntime_gpu_is_one_line(ort_predictor, monkeypatch):
    """This onnxruntime has the CPU provider only: a CUDA device is refused before any session
    loads; OpenVINO refuses any device but the CPU."""
    monkeypatch.delenv(PROVIDERS_ENV, raising=False)
    folder = ort_predictor.model.folder
    with pytest.raises(SettingsError, match="needs CUDAExecutionProvider.*pip install onnxruntime-gpu"):
        ExportedModel(folder, "onnxruntime", device="cuda")
    with pytest.raises(SettingsError, match="'openvino' runs on the CPU, not cuda:0"):
        ExportedModel(folder, "openvino", device="cuda:0")


def test_an_exported_runtime_on_a_gpu_runs_batches_together(ort_predictor):
    """The graphs take CPU tensors wherever they run: the batching default follows where they
    run (`runs_on`), not the CPU tensors (one by one on a CPU, as one padded batch on a GPU)."""
    assert ort_predictor.model.runs_on == torch.device("cpu") and not ort_predictor.batched_network
    gpu = Predictor("demo", runtime="onnxruntime")
    gpu.model.runs_on = torch.device("cuda", 0)  # as ExportedModel(..., device="cuda") sets it
    assert gpu.device == torch.device("cpu") and gpu.batched_network
    assert not Predictor("demo", runtime="onnxruntime", batched_network=False).batched_network


def test_a_missing_runtime_package_is_one_line(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_openvino)
    with pytest.raises(SettingsError, match=r"needs the openvino package: pip install"):
        Predictor("demo", runtime="openvino")


def test_explain_refuses_other_runtimes(tmp_path, capsys):
    assert main(["explain", str(SCENES[0]), "--out", str(tmp_path), "--runtime", "onnxruntime"]) == 2
    assert "torch model only" in capsys.readouterr().err


def test_export_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "model.json").write_text("{}")
    assert main(["export", "--out", str(tmp_path)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_build_gt_model_source_runs_the_chosen_runtime(ort_predictor):
    from panoptic_detr.gt.sources import open_source

    h, w = load_image(SCENES[0]).shape[:2]
    exported, torch_source = open_source("model:demo", runtime="onnxruntime"), open_source("model:demo")
    assert isinstance(exported._load().model, ExportedModel)
    assert np.array_equal(exported.labels(SCENES[0], h, w)[0], torch_source.labels(SCENES[0], h, w)[0])


def test_export_moves_a_complete_export_into_place(tmp_path, monkeypatch, capsys):
    """`export` builds in a temporary folder beside --out, moves the files in, leaves nothing
    else behind, and replaces an export only with --overwrite (the graphs themselves: above)."""
    from panoptic_detr.export import exporter

    def fake(model, folder, **kwargs):
        for name in exporter.FILES:
            (folder / name).write_text(name)
        return exporter.ExportReport(folder, "dynamo", {"pred_logits": 1e-6})

    monkeypatch.setattr(exporter, "write_graphs", fake)
    out = tmp_path / "onnx"
    assert main(["export", "--out", str(out)]) == 0
    assert "max difference 1e-06 (pred_logits)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    assert sorted(p.name for p in out.iterdir()) == sorted(exporter.FILES)
    assert main(["export", "--out", str(out)]) == 1
    assert main(["export", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.skipif(not os.environ.get("PANOPTIC_DETR_EXPORT_R50"),
                    reason="exports DETR-R50 (minutes, once per torch hub cache): PANOPTIC_DETR_EXPORT_R50=1")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_r50_export_matches_the_original(reference, tmp_path, runtime):
    """The R50 export on the reference weights against the original's float64 outputs
    (../shared/reference), within 3x the original's own float32 noise, as test_model_parity."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_weights", reference / "reference_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sd = module.reference_state_dict(json.loads((reference / "official_keys.json").read_text()))
    sd.update(torch.load(reference / "bn_stats.pt", weights_only=True))
    torch.save({"model": sd}, tmp_path / "detr-r50-reference.pth")
    pretrained = load_pretrained(tmp_path / "detr-r50-reference.pth")
    model = ExportedModel(cache.cached_export(pretrained), runtime)  # torch hub's own cache
    official = torch.load(reference / "official_outputs.pt", weights_only=True)
    det = model.detect(PaddedBatch(official["input"].float(), official["input_mask"]))
    n = official["pred_logits"].shape[1]
    masks = torch.stack(model.predict_masks(det, [torch.arange(n)] * 2))
    noise = {"pred_logits": 4e-4, "pred_boxes": 3e-5, "pred_masks": 3e-4}  # the original's, in float32
    ours = {"pred_logits": det.pred_logits, "pred_boxes": det.pred_boxes, "pred_masks": masks}
    for key in noise:
        err = (ours[key].double() - official[key]).abs().max().item()
        assert err <= 3 * noise[key], f"{key}: {err:.3g}"


def test_torchscript_exporter_gives_the_same_graphs(tmp_path):
    """The fallback (and `--exporter torchscript`) on the tiny preset: dynamic sizes and batch too."""
    from panoptic_detr.export.exporter import write_graphs
    from panoptic_detr.model import PRESETS, build_model
    from panoptic_detr.structures import Categories

    model = build_model(PRESETS["tiny"]).eval()
    report = write_graphs(model, tmp_path, categories=Categories([], num_classes=model.config.num_classes),
                          settings=None, opset=18, exporter="torchscript")
    assert report.exporter == "torchscript"
    assert json.loads((tmp_path / "model.json").read_text())["exporter"]["kind"] == "torchscript"
    net = load_pretrained_like(model)
    detect, masks = OnnxRuntimeSession(tmp_path / "detect.onnx"), OnnxRuntimeSession(tmp_path / "mask.onnx")
    for b, h, w in ((1, 57, 91), (3, 100, 64)):
        images, mask = torch.randn(b, 3, h, w), torch.zeros(b, h, w, dtype=torch.bool)
        mask[-1, h // 2 :] = True
        with torch.no_grad():
            ref = DetectGraph(net)(images, mask)
        for name, a, r in zip(DETECT_OUTPUTS, detect.run({"images": images, "mask": mask}), ref, strict=True):
            assert_within_noise(name, a, r)
        inputs = (ref[2][-1, :2], *(t[-1:] for t in ref[3:]))
        with torch.no_grad():
            want = MaskGraph(net)(*inputs)
        assert_within_noise("masks", masks.run(dict(zip(MASK_INPUTS, inputs, strict=True)))[0], want)


def load_pretrained_like(model):
    """What the export holds: a float32 copy with the batch norms folded."""
    import copy

    return copy.deepcopy(model).prepare_for_inference(channels_last=False)


def test_processes_building_one_export_at_once_build_it_once(tmp_path, monkeypatch):
    """Two builders at once (torchrun ranks): one exports under the lock, the other waits and
    finds the complete folder; no temporary folder is left behind."""
    import threading
    import time

    from panoptic_detr.loading import Pretrained
    from panoptic_detr.model import PRESETS, build_model
    from panoptic_detr.structures import Categories

    model = build_model(PRESETS["tiny"]).eval()
    pretrained = Pretrained(model, model.config, Categories([], num_classes=model.config.num_classes), "tiny")
    calls = []

    def slow_export(model, folder, **kwargs):
        calls.append(folder)
        time.sleep(0.5)  # the other thread arrives meanwhile
        for name in ("detect.onnx", "mask.onnx", "model.json"):
            (folder / name).write_text(name)

    monkeypatch.setattr(cache, "write_graphs", slow_export)
    monkeypatch.setattr(cache, "cache_dir", lambda: tmp_path)
    found = []

    def build():
        found.append(cache.cached_export(pretrained))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and found[0] == found[1]
    assert sorted(p.name for p in found[0].iterdir()) == ["detect.onnx", "mask.onnx", "model.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([found[0].name, f"{found[0].name}.lock"])


@pytest.mark.skipif(not os.environ.get("PANOPTIC_DETR_EXPORT_R50"),
                    reason="exports DETR-R50-DC5 and R101 (minutes each): PANOPTIC_DETR_EXPORT_R50=1")
@pytest.mark.parametrize("preset", ["detr_r50_dc5_panoptic", "detr_r101_panoptic"])
def test_dc5_and_r101_exports_match_torch(preset, tmp_path):
    """The other COCO architectures (random weights) on a padded batch of 2 at a size other than
    the traced one, within the float32 noise bound."""
    from panoptic_detr.export.exporter import write_graphs
    from panoptic_detr.model import PRESETS, build_model
    from panoptic_detr.structures import Categories

    model = build_model(PRESETS[preset]).eval()
    report = write_graphs(model, tmp_path, categories=Categories.coco_panoptic(), settings=None, opset=18)
    assert report.exporter == "dynamo"
    net = load_pretrained_like(model)
    images, mask = torch.randn(2, 3, 160, 224), torch.zeros(2, 160, 224, dtype=torch.bool)
    mask[1, 120:], mask[1, :, 150:] = True, True
    images[mask[:, None].expand_as(images)] = 0
    with torch.no_grad():
        ref = DetectGraph(net)(images, mask)
    got = OnnxRuntimeSession(tmp_path / "detect.onnx").run({"images": images, "mask": mask})
    for name, a, r in zip(DETECT_OUTPUTS, got, ref, strict=True):
        assert_within_noise(name, a, r)
    inputs = (ref[2][1, :5], *(t[1:] for t in ref[3:]))
    with torch.no_grad():
        want = MaskGraph(net)(*inputs)
    got_masks = OnnxRuntimeSession(tmp_path / "mask.onnx").run(dict(zip(MASK_INPUTS, inputs, strict=True)))[0]
    assert_within_noise("masks", got_masks, want)
