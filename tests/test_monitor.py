"""The metric loggers: every metric given is recorded; a resumed run drops the rows it will redo. The
peak-FLOP table behind MFU."""

import csv

import pytest
import torch

from lit_gpt.errors import InvalidInput
from lit_gpt.monitor import CSVLogger, create_loggers, peak_flops, peak_flops_of


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_csv_keeps_every_metric_and_widens_for_new_ones(tmp_path):
    logger = CSVLogger(tmp_path / "metrics.csv", resume_step=0)
    logger.log({"train_loss": 2.5, "eta_s": 12.0, "stage": "basic"}, step=1)
    logger.log({"train_loss": 2.25, "eval/hellaswag/acc": 0.3}, step=2)  # a metric the first row did not have
    written = rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["train_loss"], r["eta_s"], r["stage"]) for r in written] == [
        ("1", "2.5", "12.0", "basic"),
        ("2", "2.25", "", ""),
    ]
    assert [r["eval/hellaswag/acc"] for r in written] == ["", "0.3"]


def test_a_resumed_run_keeps_the_rows_up_to_its_step(tmp_path):
    logger = CSVLogger(tmp_path / "metrics.csv", resume_step=0)
    for step in range(1, 6):
        logger.log({"train_loss": 1.0 / step, "extra": step}, step)
    CSVLogger(tmp_path / "metrics.csv", resume_step=3).log({"train_loss": 0.0}, 4)
    written = rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in written] == ["1", "2", "3", "4"]
    assert [r["extra"] for r in written] == ["1", "2", "3", ""]
    assert float(written[2]["train_loss"]) == 1.0 / 3  # floats read back exactly


def test_an_unknown_logger_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="Unknown logger 'mlflow'; choose csv, wandb or tensorboard"):
        create_loggers(tmp_path, "mlflow", 0, {})


@pytest.mark.parametrize(
    "card,bf16,float8",
    [
        ("NVIDIA A100-SXM4-40GB", 312e12, None),
        ("NVIDIA A100 80GB PCIe", 312e12, None),
        ("NVIDIA H100 80GB HBM3", 989e12, 1979e12),
        ("NVIDIA H100 PCIe", 756e12, 1513e12),
        ("NVIDIA H200", 989e12, 1979e12),
        ("NVIDIA L40S", 362e12, 733e12),
        ("NVIDIA B200", 2250e12, 4500e12),
        ("NVIDIA GeForce RTX 4090", None, None),
    ],
)
def test_peak_flops_by_card(card, bf16, float8):
    assert peak_flops_of(card) == bf16 and peak_flops_of(card, float8=True) == float8


def test_no_peak_and_no_mfu_on_a_cpu():
    assert peak_flops(torch.device("cpu")) is None
