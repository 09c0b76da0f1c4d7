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
    """Total and per-term losses (log scale) and PQ / PQ-things / PQ-stuff on a second panel,
    written as a PNG (see `curves_figure`)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records, title)
    try:
        return atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def curves_figure(records: list[dict[str, Any]], title: str = "") -> Any:
    """The matplotlib figure of `plot_curves`: each panel's legend to its right, outside the data,
    and the PQ axis from 0, so a small PQ is not drawn as a large swing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "pq" in r]
    # one step axis for both panels: a validation point shows where in the run it was taken
    fig, (ax_loss, ax_pq) = plt.subplots(1, 2, figsize=(13, 4), sharex=True, gridspec_kw={"wspace": 0.45})
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_semantic",
                "loss_segment"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_loss.plot(xs, ys, label=key, lw=2 if key == "loss" else 1)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training losses")
    top = 0.0
    for key, label in (("pq", "PQ"), ("pq_th", "PQ things"), ("pq_st", "PQ stuff")):
        pts = [(r["step"], r[key]) for r in val if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_pq.plot(xs, ys, marker="o", label=label)
            top = max(top, *ys)
    ax_pq.set_xlabel("step")
    ax_pq.set_title("validation PQ")
    ax_pq.set_ylim(0, top * 1.08 if top > 0 else 1)
    ax_pq.grid(alpha=0.3)
    for ax in (ax_loss, ax_pq):
        if ax.lines:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                      frameon=False)
    if title:
        fig.suptitle(title)
    return fig
