import csv
import subprocess
import sys

import pytest

from lit_gpt.monitor import CSV_COLUMNS

from conftest import REPO_ROOT, assert_refused, load_script

plot_metrics = load_script("scripts/plot_metrics.py").plot_metrics


def test_writes_a_png_of_the_losses(tmp_path):
    rows = [dict(step=s, tokens=s * 1000, train_loss=8.0 - s / 10, lr=1e-3) for s in range(1, 21)]
    rows += [dict(step=s, tokens=s * 1000, val_loss=8.2 - s / 10) for s in (10, 20)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    output = plot_metrics(tmp_path / "metrics.csv")
    assert output == tmp_path / "loss.png"
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 450)


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
