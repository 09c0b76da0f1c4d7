"""The training curve: each legend outside its panel's data, the PQ axis from 0."""

from __future__ import annotations

import matplotlib.pyplot as plt
from PIL import Image

from panoptic_detr.train.curves import curves_figure, plot_curves

RECORDS = [{"step": s, "loss": 3.0 / (1 + s), "loss_ce": 1.0 / (1 + s), "loss_dice": 0.5}
           for s in range(0, 50, 5)]
RECORDS += [{"step": s, "pq": 20 + s / 10, "pq_th": 10 + s / 10, "pq_st": 30 + s / 10} for s in (10, 30, 49)]


def test_legends_outside_the_data_and_pq_from_zero(tmp_path):
    fig = curves_figure(RECORDS, "run")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        loss, pq = fig.axes
        for ax in (loss, pq):
            legend, panel = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
            assert legend.x0 >= panel.x1  # to the right of the plot area, over no curve
        # the loss legend stays clear of the PQ panel too
        assert loss.get_legend().get_window_extent(renderer).x1 <= pq.get_window_extent(renderer).x0
        assert pq.get_ylim()[0] == 0 and pq.get_ylim()[1] >= 34.9  # PQ from 0, every point shown
    finally:
        plt.close(fig)
    png = plot_curves(RECORDS, tmp_path / "curves.png")
    with Image.open(png) as im:
        assert im.width > 1000  # both panels and the legends beside them are in the file
