"""What a run reports: throughput, model FLOPs utilisation, ETA, and the metric loggers.

MFU counts the model's FLOPs per trained token (6 per parameter-token for forward and backward, the
input embedding excluded as it is a lookup, plus 12 * n_layer * n_embd * block_size for attention
scores and values, as in the PaLM paper) against the device's dense bf16 peak.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch

from lit_gpt.config import Config
from lit_gpt.errors import InvalidInput

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's data sheets: (bf16, float8), matched
# against torch.cuda.get_device_name in this order (the PCIe and NVL H100s before the SXM part).
PEAK_FLOPS: list[tuple[str, float, float | None]] = [
    ("A100", 312e12, None),  # 40 GB and 80 GB, SXM and PCIe: no float8 tensor cores
    ("H100 PCIe", 756e12, 1513e12),
    ("H100 NVL", 835e12, 1671e12),
    ("H100", 989e12, 1979e12),  # SXM
    ("H200", 989e12, 1979e12),
    ("L40S", 362e12, 733e12),
    ("B200", 2250e12, 4500e12),
]

CSV_COLUMNS = [
    "step", "stage", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "global_batch_size",
    "tokens_per_s", "tokens_per_s_per_device", "mfu", "step_time_s", "skipped_steps",
]  # fmt: skip


def flops_per_token(config: Config) -> float:
    head = config.n_embd * config.padded_vocab_size
    attention = config.n_embd * (config.n_head + 2 * config.n_query_groups) * config.head_size
    attention += config.n_head * config.head_size * config.n_embd
    mlp = 3 * config.n_embd * config.intermediate_size
    matmul_parameters = head + config.n_layer * (attention + mlp)
    return 6 * matmul_parameters + 12 * config.n_layer * config.n_embd * config.block_size


def peak_flops(device: torch.device, float8: bool = False) -> float | None:
    """The device's dense bf16 (or float8) peak, or None on a CPU or a card not in ``PEAK_FLOPS``; an
    unknown card is named once in a warning rather than given a made-up figure."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = peak_flops_of(name, float8)
    if peak is None:
        warnings.warn(f"MFU n/a: no {'float8' if float8 else 'bf16'} peak FLOP/s known for {name}", stacklevel=2)
    return peak


def peak_flops_of(card: str, float8: bool = False) -> float | None:
    for model, bf16, fp8 in PEAK_FLOPS:
        if model in card:
            return fp8 if float8 else bf16
    return None


class Throughput:
    """Tokens per second, MFU and ETA over the steps since the last report."""

    def __init__(self, config: Config, world_size: int, device: torch.device) -> None:
        self.world_size = world_size
        self.flops_per_token = flops_per_token(config)
        self.peak = peak_flops(device)
        self.last_time, self.last_tokens, self.last_step = time.perf_counter(), 0, 0

    def start(self, step: int, tokens: int) -> None:
        self.last_time, self.last_tokens, self.last_step = time.perf_counter(), tokens, step

    def report(self, step: int, tokens: int, remaining_tokens: int) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        rate = (tokens - self.last_tokens) / elapsed
        per_device = rate / self.world_size
        mfu = per_device * self.flops_per_token / self.peak if self.peak else None
        step_time = elapsed / max(step - self.last_step, 1)
        self.start(step, tokens)
        return {
            "tokens_per_s": rate,
            "tokens_per_s_per_device": per_device,
            "mfu": mfu,
            "step_time_s": step_time,
            "eta_s": remaining_tokens / rate if rate > 0 else math.inf,
        }


class SourceTokens:
    """Tokens trained from each data source so far, and the mixture realised since the last report.

    Both come from the loader's blocks taken per source (``BlockLoader.state_dict()["taken"]``), global
    counters that checkpoints keep: exact on any number of ranks and across resumes, not an estimate.
    """

    def __init__(self, names: list[str], block_size: int, taken: list[int]) -> None:
        self.names, self.block_size, self.last = names, block_size, list(taken)

    def report(self, taken: list[int]) -> tuple[dict[str, int], str]:
        """``tokens/<source>`` for the metrics, and each source's share of the tokens trained since the
        last report for the console (empty with one source)."""
        metrics = {f"tokens/{name}": count * self.block_size for name, count in zip(self.names, taken, strict=True)}
        interval = [now - before for now, before in zip(taken, self.last, strict=True)]
        self.last = list(taken)
        if len(self.names) < 2 or not sum(interval):
            return metrics, ""
        return metrics, " ".join(
            f"{name} {n / sum(interval):.1%}" for name, n in zip(self.names, interval, strict=True)
        )


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricLogger(Protocol):
    """Where metrics go: every metric given to ``log`` is recorded under its name at ``step``."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class CSVLogger:
    """``out_dir/metrics.csv``: one row per call, every metric a column (a new one widens the file once).

    On resume the file keeps the rows up to the resumed step and drops later ones, which the crashed run
    wrote but will be trained again. Floats are written with ``repr`` so they read back exactly.
    """

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path, self.columns = path, list(CSV_COLUMNS)
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns += [c for c in reader.fieldnames or [] if c not in self.columns]
                rows = [row for row in reader if int(row["step"]) <= resume_step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step} | {k: repr(v) if isinstance(v, float) else v for k, v in metrics.items() if v is not None}
        new = [column for column in row if column not in self.columns]
        if new:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases; offline (files under out_dir/wandb) unless WANDB_API_KEY is set. The run id is
    kept in ``out_dir/wandb_run_id``, so that every job of a run resumed 50 times logs into one wandb run."""

    def __init__(self, out_dir: Path, run_config: dict[str, Any]) -> None:
        import wandb

        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        id_file = out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project="tinyllama", dir=str(out_dir), config=run_config, mode=mode, id=run_id, resume="allow"
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardLogger:
    """TensorBoard event files under out_dir/tensorboard. On resume, the events of steps after the
    checkpoint (logged before a crash, and about to be logged again) are purged, so each step shows once."""

    def __init__(self, out_dir: Path, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for name, value in numeric(metrics).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that dashboards can plot (a stage name, say, is for the CSV only)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def create_loggers(out_dir: Path, logger: str, resume_step: int, run_config: dict[str, Any]) -> list[MetricLogger]:
    """The CSV logger, always, and the dashboard that ``logger`` names (csv, wandb or tensorboard)."""
    if logger not in ("csv", "wandb", "tensorboard"):
        raise InvalidInput(f"Unknown logger {logger!r}; choose csv, wandb or tensorboard")
    if logger != "csv" and importlib.util.find_spec(logger) is None:
        raise InvalidInput(f"--logger {logger} needs the {logger} package: pip install -e '.[{logger}]'")
    loggers: list[MetricLogger] = [CSVLogger(out_dir / "metrics.csv", resume_step)]
    if logger == "wandb":
        loggers.append(WandbLogger(out_dir, run_config))
    elif logger == "tensorboard":
        loggers.append(TensorBoardLogger(out_dir, resume_step))
    return loggers
