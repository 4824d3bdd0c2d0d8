"""Plot a run's training and validation loss and its learning rate against tokens seen."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from lit_gpt.cli import run
from lit_gpt.errors import InvalidInput, MissingInput

if TYPE_CHECKING:  # matplotlib is imported when a plot is made, not when the script is loaded
    from matplotlib.figure import Figure


def plot_metrics(metrics_path: Path, output: Path | None = None) -> Path:
    """Write a PNG of ``metrics.csv`` (as written by pretrain/tinyllama.py).

    Args:
        metrics_path: the run's metrics.csv.
        output: the PNG to write; default: loss.png beside the CSV.
    """
    figure = loss_figure(metrics_path)  # imports matplotlib first
    import matplotlib.pyplot as plt

    output = output or metrics_path.with_name("loss.png")
    figure.savefig(output, dpi=100)
    plt.close(figure)
    print(f"Wrote {output}")
    return output


def loss_figure(metrics_path: Path) -> Figure:
    """The losses (left axis) and the learning rate (right axis) against tokens, 8 x 4.5 inches, with the
    legend below the axes, where it hides no curve."""
    try:
        import matplotlib
    except ImportError:
        raise MissingInput("Plotting needs matplotlib: pip install matplotlib (or pip install -e '.[demo]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_path.is_file():
        raise MissingInput(f"No metrics file at {metrics_path}: every training run writes out_dir/metrics.csv")
    with open(metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["tokens"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    val = [(int(r["tokens"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    lr = [(int(r["tokens"]), float(r["lr"])) for r in rows if r["lr"]]
    if not train:
        raise InvalidInput(f"{metrics_path} has no training-loss rows to plot")

    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    loss_axis.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if val:
        loss_axis.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("tokens")
    loss_axis.set_ylabel("cross-entropy loss")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(*zip(*lr, strict=True), "--", label="learning rate", color="tab:gray")
    lr_axis.set_ylabel("learning rate")
    handles = loss_axis.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    loss_axis.set_title(f"{metrics_path.parent.name}: loss and learning rate")
    figure.tight_layout()  # makes room for the legend below the axes, inside the figure
    return figure


if __name__ == "__main__":
    run(plot_metrics)
