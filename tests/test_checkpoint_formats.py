"""Checkpoints outlive the code: every committed fixture (one per format ever written) resumes with the
losses that the code which wrote it logged next, and a format this code cannot read is refused in one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt.migrations import FORMAT_VERSION, MIGRATIONS, format_version, migrate

from conftest import REPO_ROOT, assert_refused, metrics

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "checkpoints"
sys.path.insert(0, str(FIXTURES))
from make import SAVED_AT, training_args  # noqa: E402  (the fixtures' own run, shared with their maker)

FORMATS = sorted(int(path.name.removeprefix("format-")) for path in FIXTURES.glob("format-*"))
SCRIPT = REPO_ROOT / "pretrain" / "tinyllama.py"


def resume(checkpoint: Path, out_dir: Path, data: Path = FIXTURES / "data") -> subprocess.CompletedProcess:
    args = [*training_args(data, out_dir), "--resume", str(checkpoint)]
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def logged_losses(out_dir: Path) -> dict[int, float]:
    return {step: float(loss) for step, loss in metrics(out_dir, "train_loss").items()}


def test_a_fixture_exists_for_every_format_since_the_first():
    assert FORMATS == list(range(1, FORMAT_VERSION + 1))


@pytest.mark.numerics
@pytest.mark.parametrize("version", FORMATS)
def test_every_fixture_resumes_with_the_losses_its_code_logged_next(tmp_path, version):
    fixture = FIXTURES / f"format-{version}"
    checkpoint = fixture / f"step-{SAVED_AT:08d}"
    meta = torch.load(checkpoint / "meta.pt", weights_only=True)
    assert format_version(meta) == version
    result = resume(checkpoint, tmp_path / "out")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"at step {SAVED_AT}" in result.stdout
    recorded = json.loads((fixture / "fixture.json").read_text())["losses_after_resume"]
    logged = logged_losses(tmp_path / "out")
    assert sorted(logged) == sorted(int(step) for step in recorded)
    for step, loss in recorded.items():
        assert logged[int(step)] == pytest.approx(loss, rel=RECORDED_LOSS_RTOL, abs=0), (step, logged, recorded)


# The fixtures' losses were logged on another machine, so they are compared within float32 rounding, not
# bitwise: PyTorch's CPU kernels differ by instruction set (ATEN_CPU_CAPABILITY default, avx2, avx512 sum
# 1, 8 or 16 floats at a time), and a reordered float32 sum of n terms differs by up to about n x 2**-24
# relative. Measured: the format-1/2 fixtures resume to 5.140912055969238 under AVX-512 where AVX2 logged
# 5.14091157913208, one float32 ulp (9e-8 relative). 1e-5 allows ~80 ulps of such drift over the three
# steps after resume, and is 100 times finer than what a wrong resume does (another block, a lost
# optimizer moment or learning-rate step moves these losses by 1e-3 or more). Bitwise equality is tested
# where both sides run in one test run (tests/test_pretrain.py, tests/test_preemption.py).
RECORDED_LOSS_RTOL = 1e-5


def test_the_resumed_run_saves_todays_format(tmp_path):
    resume(FIXTURES / f"format-{FORMATS[0]}" / f"step-{SAVED_AT:08d}", tmp_path / "out")
    meta = torch.load(tmp_path / "out" / "step-00000006" / "meta.pt", weights_only=True)
    assert meta["format_version"] == FORMAT_VERSION and meta["code_version"].startswith("lit-gpt-tinyllama")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])
def test_a_newer_format_is_refused_in_one_line(tmp_path, version):
    checkpoint = tmp_path / "newer"
    shutil.copytree(FIXTURES / f"format-{FORMATS[-1]}" / f"step-{SAVED_AT:08d}", checkpoint)
    meta = torch.load(checkpoint / "meta.pt", weights_only=True)
    torch.save(meta | {"format_version": version}, checkpoint / "meta.pt")
    assert_refused(resume(checkpoint, tmp_path / "out"), f"format {version}", f"up to format {FORMAT_VERSION}")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_a_checkpoint_from_before_numbered_formats_is_refused_in_one_line(tmp_path):
    checkpoint = tmp_path / "ancient"
    shutil.copytree(FIXTURES / "format-1" / f"step-{SAVED_AT:08d}", checkpoint)
    meta = torch.load(checkpoint / "meta.pt", weights_only=True)
    torch.save({"step": meta["step"], "loaders": None}, checkpoint / "meta.pt")  # session 1's layout
    assert_refused(
        resume(checkpoint, tmp_path / "out"), "before checkpoint formats were numbered", "--initial_checkpoint"
    )


def test_without_its_migration_a_format_is_refused(monkeypatch):
    meta = torch.load(FIXTURES / "format-2" / f"step-{SAVED_AT:08d}" / "meta.pt", weights_only=True)
    assert migrate(meta, Path("ckpt"))["spike_guard"] == {"loss": [], "grad_norm": []}
    monkeypatch.delitem(MIGRATIONS, 2)
    with pytest.raises(ValueError, match="format 2, which this code cannot migrate to format"):
        migrate(meta, Path("ckpt"))


def grown_data(tmp_path: Path) -> Path:
    """The fixtures' data with one more shard in source a."""
    from lit_gpt.data.index import index_directory
    from lit_gpt.data.shards import write_shard

    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "data", data)
    write_shard(data / "a" / "train_a_0_0000000009.bin", np.arange(17 * 4, dtype=np.uint16))
    index_directory(data / "a")
    return data


def test_a_format_4_checkpoint_on_changed_data_names_the_shards_from_its_own_list(tmp_path):
    checkpoint = FIXTURES / "format-4" / f"step-{SAVED_AT:08d}"
    assert "names" in json.loads((checkpoint / "data_fingerprint.json").read_text())["a"]
    result = resume(checkpoint, tmp_path / "out", grown_data(tmp_path))
    assert_refused(result, "Training source 'a' changed", "1 shard(s) added (e.g. train_a_0_0000000009.bin)")


def test_without_the_runs_manifest_a_change_is_told_by_its_counts(tmp_path):
    """A format-5 checkpoint keeps digests and totals only; copied away from its run's data_manifests, a
    change is still refused, with the counts then and now and the manifest it would have named."""
    checkpoint = tmp_path / "copied" / f"step-{SAVED_AT:08d}"
    shutil.copytree(FIXTURES / "format-5" / checkpoint.name, checkpoint)
    recorded = json.loads((checkpoint / "data_fingerprint.json").read_text())
    assert set(recorded["a"]) == {"digest", "shards", "tokens"}
    result = resume(checkpoint, tmp_path / "out", grown_data(tmp_path))
    manifest = checkpoint.parent / "data_manifests" / f"{recorded['a']['digest']}.json"
    assert_refused(result, "Training source 'a' changed", "2 shards of 816 tokens then, 3 of 884 now", str(manifest))
