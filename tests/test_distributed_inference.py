"""predict and evaluate --weights under torchrun: 2 CPU processes (gloo), spawned here with
torchrun's environment, give what 1 process gives: the same files, the same predictions.json,
the same PQ; on an odd number of images (uneven shares); and a run whose rank 1 dies after its
first image is completed by a rerun with another world size. The death is simulated
deterministically: rank 1's `save_result` (or `Relay.send`, with --gather-outputs) exits the
process after writing (sending) its first image."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from panoptic_detr.cli import main
from panoptic_detr.parallel import DistInfo, shard, threads_per_process

N_IMAGES = 5  # odd: rank 0 predicts 3, rank 1 predicts 2
SMALL = ["--weights", "demo", "--size", "96", "--max-size", "128", "--threshold", "0.5", "--quiet"]


def _rank(rank: int, world: int, port: int, commands: list[list[str]], log: str,
          die_after_first: bool, cwd: str | None) -> None:
    """One process of the run: torchrun's environment, then each command as the CLI runs it
    (in `cwd`, its machine's own folder, when given)."""
    if cwd is not None:
        os.chdir(cwd)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if die_after_first and rank == 1:  # after writing its first image, or sending it to rank 0
        from panoptic_detr import runner
        from panoptic_detr.parallel import Relay

        save, send = runner.save_result, Relay.send

        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os._exit(3)

        def send_then_die(*args, **kwargs):
            send(*args, **kwargs)
            os._exit(3)

        runner.save_result, Relay.send = save_then_die, send_then_die
    codes = []
    with open(f"{log}.{rank}.out", "w") as out, open(f"{log}.{rank}.err", "w") as err:
        with redirect_stdout(out), redirect_stderr(err):
            for argv in commands:
                codes.append(main(argv))
    Path(f"{log}.{rank}.codes").write_text(json.dumps(codes))
    sys.exit(max(codes))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(commands: list[list[str]], log: Path, die_after_first: bool = False,
          cwds: list[Path] | None = None) -> list[int]:
    """Run `commands` in 2 processes of one process group; their exit codes."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, commands, str(log), die_after_first,
                                             None if cwds is None else str(cwds[r])))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    return [p.exitcode for p in procs]


@pytest.fixture
def one_thread():
    with process_threads():
        yield


@contextlib.contextmanager
def process_threads():
    """The thread count of each of the 2 processes (2 cores here, or `threads_per_process`):
    float sums split over another number of threads round differently, enough to move a
    score's 5th decimal."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(DistInfo(0, 2, 0, 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but predictions.json: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "predictions.json"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from panoptic_detr.data.synth import make_dataset

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, N_IMAGES, seed=5, size=(96, 128), progress=False)
    return root


@pytest.fixture(scope="module")
def two_ranks(dataset, tmp_path_factory):
    """predict, evaluate --weights, and predict with a broken image, of `dataset` in 2
    processes: (folder, each process's exit codes)."""
    run = tmp_path_factory.mktemp("two")
    (run / "broken.jpg").write_bytes(b"not a JPEG")
    commands = [["predict", str(dataset / "images"), "--out", str(run / "predict"), *SMALL],
                ["evaluate", "--data", str(dataset), "--out", str(run / "evaluate"), *SMALL],
                ["predict", str(run / "broken.jpg"), str(dataset / "images"), "--out", str(run / "bad"),
                 *SMALL]]
    from panoptic_detr.gt.convert import panoptic_to_instances_file

    panoptic_to_instances_file(dataset / "panoptic.json", run / "instances.json", progress=False)
    commands.append(build_gt_argv(dataset, run, run / "gt"))
    spawn(commands, run / "log")
    return run, [json.loads((run / f"log.{r}.codes").read_text()) for r in range(2)]


def build_gt_argv(dataset: Path, run: Path, out: Path) -> list[str]:
    """build-gt: the dataset's things from instances, the rest from the demo model."""
    return ["build-gt", "--instances", str(run / "instances.json"), "--images", str(dataset / "images"),
            "--out", str(out), "--stuff-from", "model:demo@0.5", "--model-size", "96", "128", "--quiet"]


def test_shards_are_exact_and_uneven():
    items = list(range(7))
    shares = [shard(items, DistInfo(rank, 3, rank)) for rank in range(3)]
    assert sorted(i for s in shares for i in s) == items
    assert [len(s) for s in shares] == [3, 2, 2]


def test_predict_on_two_ranks_writes_what_one_process_writes(dataset, two_ranks, tmp_path, one_thread):
    run, codes = two_ranks
    assert codes[0][0] == codes[1][0] == 0, (run / "log.0.err").read_text() + (run / "log.1.err").read_text()
    assert main(["predict", str(dataset / "images"), "--out", str(tmp_path / "one"), *SMALL]) == 0
    one, two = tmp_path / "one", run / "predict"
    assert len(list((two / "records").glob("*.json"))) == N_IMAGES
    assert outputs(two) == outputs(one)  # PNGs, overlays, records: byte for byte
    pred_one = json.loads((one / "predictions.json").read_text())
    pred_two = json.loads((two / "predictions.json").read_text())
    assert pred_two == pred_one
    assert [a["file_name"] for a in pred_two["annotations"]] == sorted(a["file_name"]
                                                                       for a in pred_two["annotations"])
    assert sum(len(a["segments_info"]) for a in pred_two["annotations"]) > 0
    # rank 0 reports the whole run, once; rank 1 says nothing
    assert f"{N_IMAGES} inputs: {N_IMAGES} predicted" in (run / "log.0.out").read_text()
    assert "predicted" not in (run / "log.1.out").read_text()


def test_evaluate_on_two_ranks_gives_the_figures_of_one_process(dataset, two_ranks, tmp_path, one_thread):
    run, codes = two_ranks
    assert codes[0][1] == codes[1][1] == 0, (run / "log.0.err").read_text() + (run / "log.1.err").read_text()
    assert main(["evaluate", "--data", str(dataset), "--out", str(tmp_path / "one"), "--workers", "0",
                 *SMALL]) == 0
    one = json.loads((tmp_path / "one" / "pq.json").read_text())
    two = json.loads((run / "evaluate" / "pq.json").read_text())
    assert one["images"] == N_IMAGES and one["All"]["n"] > 0
    for r in (one, two):
        r.pop("predictions")
    assert two == one  # exactly: the same sums in the same order
    assert (json.loads((run / "evaluate" / "predictions.json").read_text())
            == json.loads((tmp_path / "one" / "predictions.json").read_text()))
    assert outputs(run / "evaluate" / "predictions") == outputs(tmp_path / "one" / "predictions")
    assert "All       |" in (run / "log.0.out").read_text()
    assert "All" not in (run / "log.1.out").read_text()


def test_a_broken_image_is_one_line_and_the_others_are_done(dataset, two_ranks, tmp_path, one_thread):
    run, codes = two_ranks
    assert codes[0][2] == codes[1][2] == 1  # as one process: exit 1 when an image failed
    lines = [line for line in (run / "log.0.err").read_text().splitlines() if "broken.jpg" in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / 'broken.jpg'}: ")
    assert "broken.jpg" not in (run / "log.1.err").read_text()  # reported once, by rank 0
    assert f"{N_IMAGES + 1} inputs: {N_IMAGES} predicted, 0 already done (skipped), 1 failed" in (
        run / "log.0.out").read_text()
    assert main(["predict", str(dataset / "images"), "--out", str(tmp_path / "one"), *SMALL]) == 0
    assert outputs(run / "bad") == outputs(tmp_path / "one")


def test_build_gt_on_two_ranks_builds_the_dataset_of_one_process(dataset, two_ranks, tmp_path, one_thread):
    run, codes = two_ranks
    assert codes[0][3] == codes[1][3] == 0, (run / "log.0.err").read_text() + (run / "log.1.err").read_text()
    assert main(build_gt_argv(dataset, run, tmp_path / "gt")) == 0
    one, two = tmp_path / "gt", run / "gt"
    assert json.loads((two / "panoptic.json").read_text()) == json.loads((one / "panoptic.json").read_text())
    assert outputs(two) == outputs(one)  # PNGs, images, previews, report
    assert json.loads((two / "report.json").read_text())["images"]["processed"] == N_IMAGES
    assert "written:" in (run / "log.0.out").read_text() and "written:" not in (run / "log.1.out").read_text()


def test_a_rerun_with_another_world_size_completes_a_run_whose_rank_died(dataset, tmp_path, capsys,
                                                                       one_thread):
    out = tmp_path / "out"
    argv = ["predict", str(dataset / "images"), "--out", str(out), *SMALL]
    codes = spawn([argv], tmp_path / "log", die_after_first=True)
    assert codes[1] == 3
    assert codes[0] == 1  # rank 0 finished its share, then found rank 1 gone: one line, not a hang
    err = (tmp_path / "log.0.err").read_text()
    assert "another process of this run stopped" in err and "Traceback" not in err
    finished = len(list((out / "records").glob("*.json")))
    assert finished == 3 + 1  # rank 0's 3 images and rank 1's first
    assert not (out / "predictions.json").exists()
    capsys.readouterr()
    assert main(argv) == 0  # one process
    line = f"{N_IMAGES} inputs: {N_IMAGES - finished} predicted, {finished} already done"
    assert line in capsys.readouterr().out
    assert main(["predict", str(dataset / "images"), "--out", str(tmp_path / "ref"), *SMALL]) == 0
    assert outputs(out) == outputs(tmp_path / "ref")
    assert (json.loads((out / "predictions.json").read_text())
            == json.loads((tmp_path / "ref" / "predictions.json").read_text()))


@pytest.fixture(scope="module")
def gathered(dataset, tmp_path_factory):
    """predict and evaluate --weights with --gather-outputs, on two "machines" that share no
    file system: each process runs in a folder of its own and --out is relative, so rank 1's
    --out is not rank 0's. Rank 0's folder already holds 2 of the images predicted (an earlier
    run's). Returns (run folder, node0, node1)."""
    run = tmp_path_factory.mktemp("gathered")
    node0, node1 = run / "node0", run / "node1"
    node0.mkdir(), node1.mkdir()
    images = sorted((dataset / "images").iterdir())
    with process_threads():  # as the 2 processes will: their records must match this run's
        assert main(["predict", *map(str, images[:2]), "--out", str(node0 / "out"), *SMALL]) == 0
    codes = spawn([["predict", str(dataset / "images"), "--out", "out", "--gather-outputs", *SMALL],
                   ["evaluate", "--data", str(dataset), "--out", "evaluate", "--gather-outputs", *SMALL]],
                  run / "log", cwds=[node0, node1])
    errors = (run / "log.0.err").read_text() + (run / "log.1.err").read_text()
    assert codes == [0, 0], errors
    return run, node0, node1


def test_gathered_outputs_are_written_by_rank_0_alone(dataset, gathered, tmp_path, one_thread):
    """Rank 1 sends its images' files and rank 0 writes them: rank 0's folder holds what 1
    process writes, byte for byte, and rank 1 writes nothing; the 2 images done before are
    skipped by both processes, as a resumed run skips them."""
    run, node0, node1 = gathered
    assert not list(node1.iterdir())  # rank 1 wrote nothing where it runs
    report = (run / "log.0.out").read_text()
    assert f"{N_IMAGES} inputs: {N_IMAGES - 2} predicted, 2 already done" in report
    assert main(["predict", str(dataset / "images"), "--out", str(tmp_path / "one"), *SMALL]) == 0
    assert outputs(node0 / "out") == outputs(tmp_path / "one")
    assert ((node0 / "out" / "predictions.json").read_bytes()
            == (tmp_path / "one" / "predictions.json").read_bytes())


def test_gathered_evaluation_gives_the_figures_and_files_of_one_process(dataset, gathered, tmp_path,
                                                                       one_thread):
    run, node0, node1 = gathered
    assert not list(node1.iterdir())
    assert main(["evaluate", "--data", str(dataset), "--out", str(tmp_path / "one"), "--workers", "0",
                 *SMALL]) == 0
    one, two = tmp_path / "one", node0 / "evaluate"
    assert outputs(two / "predictions") == outputs(one / "predictions")  # rank 1's PNGs too
    assert len(outputs(two / "predictions")) == N_IMAGES
    figures = [json.loads((folder / "pq.json").read_text()) for folder in (one, two)]
    for r in figures:
        r.pop("predictions")
    assert figures[1] == figures[0] and figures[0]["All"]["n"] > 0
    assert (two / "predictions.json").read_bytes() == (one / "predictions.json").read_bytes()


def test_a_gathered_run_whose_rank_died_is_completed_by_a_rerun(dataset, tmp_path, capsys, one_thread):
    """--gather-outputs, rank 1 dies once rank 0 has its first image: rank 0 writes that image
    and its own 3, stops with one line, and one process completes the run."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir(), node1.mkdir()
    argv = ["predict", str(dataset / "images"), "--out", "out", "--gather-outputs", *SMALL]
    codes = spawn([argv], tmp_path / "log", die_after_first=True, cwds=[node0, node1])
    assert codes == [1, 3]
    err = (tmp_path / "log.0.err").read_text()
    assert "another process of this run stopped" in err and "Traceback" not in err
    assert len(list((node0 / "out" / "records").glob("*.json"))) == 3 + 1 and not list(node1.iterdir())
    capsys.readouterr()
    assert main([*argv[:3], str(node0 / "out"), *argv[4:]]) == 0  # one process
    assert f"{N_IMAGES} inputs: 1 predicted, 4 already done" in capsys.readouterr().out
    assert main(["predict", str(dataset / "images"), "--out", str(tmp_path / "ref"), *SMALL]) == 0
    assert outputs(node0 / "out") == outputs(tmp_path / "ref")


def test_decoding_in_loader_workers_changes_nothing(dataset, tmp_path, capsys):
    """--loader-workers 2 (DataLoader processes decoding ahead, writer thread behind) writes
    what decoding in the process writes, a broken image included, batches of 2 over 6 inputs."""
    (tmp_path / "broken.jpg").write_bytes(b"not a JPEG")
    inputs = [str(tmp_path / "broken.jpg"), str(dataset / "images")]
    for name, workers in (("serial", "0"), ("loaders", "2")):
        argv = ["predict", *inputs, "--out", str(tmp_path / name), "--batch-size", "2",
                "--loader-workers", workers, *SMALL]
        assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == err[1] and "broken.jpg" in err[0]
    assert outputs(tmp_path / "loaders") == outputs(tmp_path / "serial")
    assert ((tmp_path / "loaders" / "predictions.json").read_bytes()
            == (tmp_path / "serial" / "predictions.json").read_bytes())


def test_loader_workers_belong_to_a_model_evaluation(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--gt", "a.json", "--pred", "b.json", "--loader-workers", "2"])
    assert stop.value.code == 2
    assert "--loader-workers applies to a model evaluation" in capsys.readouterr().err


def test_per_image_statistics_added_in_chunks_are_evaluate_files_figures(tmp_path):
    """What `evaluate --weights` under torchrun sums (per-image `score_pair`, `sum_in_chunks`) is
    exactly `evaluate_files`' result, over more images than one chunk; predictions are the
    ground truth shifted by 1-3 pixels (IoUs of many values), where a plain running sum
    differs in the last bits."""
    import numpy as np

    from panoptic_detr.data.panoptic_png import read_panoptic_png, write_panoptic_png
    from panoptic_detr.data.synth import make_dataset
    from panoptic_detr.eval.evaluate import (
        CHUNK_SIZE,
        evaluate_files,
        load_json,
        pair_annotations,
        score_pair,
        sum_in_chunks,
        summarize,
    )
    from panoptic_detr.eval.pq import PQStat

    n = 2 * CHUNK_SIZE + 5
    gt_json = make_dataset(tmp_path / "gt", n, seed=1, size=(24, 32), progress=False)
    gt = load_json(gt_json, "ground-truth")
    (tmp_path / "pred").mkdir()
    for i, ann in enumerate(gt["annotations"]):
        id_map = read_panoptic_png(tmp_path / "gt" / "panoptic" / ann["file_name"])
        write_panoptic_png(tmp_path / "pred" / ann["file_name"], np.roll(id_map, 1 + i % 3, axis=1))
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(gt))
    want = evaluate_files(gt_json, None, pred_json, tmp_path / "pred", workers=0)
    assert 0.2 < want["All"]["pq"] < 0.9
    tasks, problems, repaired = pair_annotations(gt, gt, tmp_path / "gt" / "panoptic", tmp_path / "pred",
                                                 gt_json, pred_json)
    assert len(tasks) == n and not problems
    cats = frozenset(c["id"] for c in gt["categories"])
    stats = [score_pair(task, cats)[0] for task in tasks]
    assert summarize(sum_in_chunks(stats), gt["categories"], n, repaired) == want
    running = PQStat()
    for stat in stats:
        running += stat
    assert summarize(running, gt["categories"], n, repaired) != want  # the order of the sums matters
