"""A run's metrics.jsonl (one JSON record a line: logged losses, or validation scores) and its
curve: losses and validation PQ against the step, as a PNG (matplotlib Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.files import atomic_write


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a crash, is skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget records logged after the checkpoint (they will be logged again)."""
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode()))


def plot_curves(records: list[dict[str, Any]], png: str | Path, title: str = "") -> Path:
    """Total and per-term losses (log scale) and PQ / PQ-things / PQ-stuff on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "pq" in r]
    fig, (ax_loss, ax_pq) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_semantic",
                "loss_segment"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_loss.plot(xs, ys, label=key, lw=2 if key == "loss" else 1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training losses")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    for key, label in (("pq", "PQ"), ("pq_th", "PQ things"), ("pq_st", "PQ stuff")):
        pts = [(r["step"], r[key]) for r in val if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_pq.plot(xs, ys, marker="o", label=label)
    ax_pq.set_xlabel("step")
    ax_pq.set_title("validation PQ")
    if ax_pq.lines:
        ax_pq.legend(fontsize=8)
    ax_pq.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
