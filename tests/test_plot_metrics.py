import csv
import subprocess
import sys

import pytest

from lit_gpt.monitor import CSV_COLUMNS

from conftest import REPO_ROOT, assert_refused, load_script

script = load_script("scripts/plot_metrics.py")
plot_metrics, loss_figure = script.plot_metrics, script.loss_figure


def write_metrics(path):
    """A run's log: a warm-up then a decaying learning rate, losses falling, two validations."""
    rows = [
        dict(step=s, tokens=s * 1000, train_loss=8.0 - s / 10, lr=1e-3 * min(s / 5, 1.2 - s / 20)) for s in range(1, 21)
    ]
    rows += [dict(step=s, tokens=s * 1000, val_loss=8.2 - s / 10) for s in (10, 20)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_writes_a_png_of_the_losses(tmp_path):
    write_metrics(tmp_path / "metrics.csv")
    output = plot_metrics(tmp_path / "metrics.csv")
    assert output == tmp_path / "loss.png"
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 450)


def test_the_legend_hides_no_curve_and_stays_in_the_picture(tmp_path):
    """Drawn as saved: the legend lies inside the figure and outside the plotting area (where every curve
    and the top of the learning rate are), and covers none of the axis labels."""
    write_metrics(tmp_path / "metrics.csv")
    figure = loss_figure(tmp_path / "metrics.csv")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (loss_axis, lr_axis) = figure.axes
    legend = loss_axis.get_legend().get_window_extent(renderer)
    assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1
    assert figure.bbox.y0 <= legend.y0 and legend.y1 <= figure.bbox.y1
    labels = [loss_axis.xaxis.label, loss_axis.yaxis.label, lr_axis.yaxis.label, *loss_axis.get_xticklabels()]
    for area in [loss_axis.get_window_extent(renderer), *(label.get_window_extent(renderer) for label in labels)]:
        assert not legend.overlaps(area), (legend, area)
    assert len(loss_axis.get_legend().get_texts()) == 3


def test_an_empty_log_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.csv").write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="has no training-loss rows"):
        plot_metrics(tmp_path / "metrics.csv")


def test_a_missing_log_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "plot_metrics.py"), "--metrics_path", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
    )
    assert_refused(result, f"No metrics file at {tmp_path / 'nope.csv'}")


def test_without_matplotlib_it_says_what_to_install(tmp_path):
    write_metrics(tmp_path / "metrics.csv")
    program = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "  # makes "import matplotlib" raise ImportError
        f"sys.argv = ['plot_metrics.py', '--metrics_path', {str(tmp_path / 'metrics.csv')!r}]; "
        f"runpy.run_path({str(REPO_ROOT / 'scripts' / 'plot_metrics.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert_refused(result, "needs matplotlib", "pip install")
    assert not (tmp_path / "loss.png").exists()
