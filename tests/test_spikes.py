"""The loss-spike guard: its rule against hand-computed values, then in training with a spike made by data."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lit_gpt.data.index import index_directory
from lit_gpt.data.run_loaders import training_loader
from lit_gpt.data.shards import write_shard
from lit_gpt.run import DataSource, RunConfig
from lit_gpt.schedule import Stage
from lit_gpt.spikes import SpikeGuard

from conftest import DEMO_TOKENIZER, REPO_ROOT, TINY, train_args

SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"


def test_a_value_beyond_mean_plus_sigma_std_of_a_full_window_is_a_spike():
    guard = SpikeGuard(window=4, sigma=2.0)
    for loss in (1.0, 2.0, 3.0):
        assert guard.check(loss=loss, grad_norm=1.0) is None  # the window is not full yet
    assert guard.check(loss=100.0, grad_norm=1.0) is None  # still filling: it was not full before this step
    guard.reset()
    for loss in (1.0, 2.0, 3.0, 4.0):
        guard.check(loss=loss, grad_norm=1.0)
    # mean 2.5, population std sqrt(1.25) = 1.1180: the threshold is 2.5 + 2 x 1.1180 = 4.736
    assert guard.check(loss=4.73, grad_norm=1.0) is None
    guard.load_state_dict({"loss": [1.0, 2.0, 3.0, 4.0], "grad_norm": [1.0] * 4})
    verdict = guard.check(loss=4.74, grad_norm=1.0)
    assert verdict is not None and verdict.startswith("loss 4.74 is 2.0 standard deviations above the mean")
    # the spike joined the window: [2, 3, 4, 4.74], and the gradient norm is checked as well
    assert guard.state_dict()["loss"] == [2.0, 3.0, 4.0, 4.74]
    assert guard.check(loss=3.0, grad_norm=1.5).startswith("grad_norm 1.5 is inf standard deviations")
    off = SpikeGuard(window=2, sigma=1.0, enabled=False)
    assert [off.check(loss=v, grad_norm=1.0) for v in (1.0, 1.0, 50.0)] == [None, None, None]
    assert guard.check(loss=float("nan"), grad_norm=1.0) is None  # non-finite steps are handled apart
    assert "nan" not in str(guard.state_dict())


PATTERN = np.arange(100, 133, dtype=np.uint16)  # every block the same 33 tokens: learnt in a few steps
BLOCKS, SPIKE_STEP = 256, 26  # the 26th step (1-based) reads random tokens only


def write_data(directory: Path, spike_blocks: set[int] = frozenset(), probe: bool = False) -> None:
    """One shard of BLOCKS blocks; block k holds the token k when probing the order, else the pattern or,
    for ``spike_blocks``, random tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    blocks = [
        np.full(33, k, dtype=np.uint16)
        if probe
        else (rng.integers(0, 4096, 33, dtype=np.uint16) if k in spike_blocks else PATTERN)
        for k in range(BLOCKS)
    ]
    write_shard(directory / "train_a_0_0000000000.bin", np.concatenate(blocks))
    index_directory(directory, tokenizer_path=DEMO_TOKENIZER)


# two stages: the guard measures afresh from the second one, so its window is full from step 24 on
STAGES = "[{name: learn, tokens: 4096}, {name: steady, tokens: 3584}]"


def blocks_of_step(directory: Path, step: int) -> set[int]:
    """The blocks that training reads in ``step`` (1-based), from the loader itself on probe data."""
    write_data(directory, probe=True)
    run = RunConfig(
        model_name="tiny_LLaMA_5M",
        model_config={"block_size": 32},
        train_data=[DataSource("a", directory)],
        stages=[Stage("learn", tokens=4096), Stage("steady", tokens=3584)],
        global_batch_size=8,
        micro_batch_size=2,
        num_workers=0,
        val_data=None,
    )
    config = run.model()
    batches = iter(training_loader(run, config, run.stage_plan(config, 1), rank=0, world_size=1))
    micro_batches = [next(batches) for _ in range(step * 4)][-4:]
    return {int(row[0]) for batch in micro_batches for row in batch}


@pytest.fixture(scope="module")
def spiky_data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("spiky")
    spike_blocks = blocks_of_step(directory, SPIKE_STEP)
    assert len(spike_blocks) == 8
    write_data(directory, spike_blocks)
    return directory


def train(data: Path, out: Path, *extra: str) -> tuple[dict[int, str], dict[int, str], str]:
    args = train_args(data.parent, out, "--stages", STAGES, "--spike_window", "8", "--eval_interval", "1000", *extra)
    args[args.index("--train_data") + 1] = f"[{{name: a, path: {data}}}]"
    args[args.index("--val_data") + 1] = "null"
    args[args.index("--model_config") + 1] = TINY
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    table = [dict(zip(header, row.split(","), strict=True)) for row in rows[1:]]
    losses = {int(r["step"]): r["train_loss"] for r in table if r["train_loss"]}
    spikes = {int(r["step"]): r["spike_steps"] for r in table if r["spike_steps"]}
    return losses, spikes, result.stdout


def test_a_spike_made_by_data_is_skipped_and_resume_keeps_the_window(spiky_data, tmp_path):
    guarded, guarded_spikes, log = train(spiky_data, tmp_path / "guarded", "--save_interval", "19")
    unguarded, unguarded_spikes, _ = train(spiky_data, tmp_path / "unguarded", "--spike_guard", "false")
    steady = [float(guarded[s]) for s in range(18, SPIKE_STEP)]
    assert max(steady) < 0.5, steady  # the pattern is learnt before the spike
    assert float(guarded[SPIKE_STEP]) > 20 * np.mean(steady)  # random tokens: a loss 20x the running mean
    assert f"Step {SPIKE_STEP}: loss " in log and "update skipped (loss spike)" in log
    assert log.count("update skipped") == 1
    assert [guarded_spikes[s] for s in (SPIKE_STEP - 1, SPIKE_STEP, 30)] == ["0", "1", "1"]
    assert set(unguarded_spikes.values()) == {"0"}
    # the same run until the spike's update, which only the unguarded run applies
    assert [guarded[s] for s in range(1, SPIKE_STEP + 1)] == [unguarded[s] for s in range(1, SPIKE_STEP + 1)]
    assert all(guarded[s] != unguarded[s] for s in range(SPIKE_STEP + 1, 31))

    # step 19's checkpoint holds a window with 3 of its 8 steps; without them the resumed run would not
    # have a full window at the spike, and would apply it
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoint = tmp_path / "guarded" / "step-00000019"
    losses, _, log = train(spiky_data, resumed, "--resume", str(checkpoint), "--save_interval", "19")
    assert "update skipped (loss spike)" in log
    assert [losses[s] for s in range(20, 31)] == [guarded[s] for s in range(20, 31)]


def test_guard_settings_are_checked():
    with pytest.raises(ValueError, match="--spike_window must be at least 2 and --spike_sigma positive, not 1"):
        RunConfig(spike_window=1).spikes()
    with pytest.raises(ValueError, match="not 128 and 0.0"):
        RunConfig(spike_sigma=0.0).spikes()
    assert RunConfig(spike_guard=False).spikes().enabled is False
