"""Every shipped recipe parses with the real CLI and describes the run its comments promise."""

from pathlib import Path

import pytest

from lit_gpt.run import RunConfig

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "pretrain" / "configs"


def recipe(name: str):
    hparams = RunConfig.from_recipe(CONFIGS / name)
    world = (hparams.devices if isinstance(hparams.devices, int) else 1) * hparams.num_nodes
    return hparams, hparams.stage_plan(hparams.model(), world)


def test_v1_is_the_paper_run():
    hparams, plan = recipe("tiny_llama_v1.yaml")
    assert plan.max_steps == pytest.approx(1_430_512, rel=1e-6)  # 3T tokens / 2M tokens per step
    assert (hparams.learning_rate, hparams.min_lr, hparams.warmup_steps) == (4e-4, 4e-5, 2000)
    assert plan.batch_sizes == [1024] and hparams.devices * hparams.num_nodes == 16


def test_v1_1_math_code_stages():
    hparams, plan = recipe("tiny_llama_v1.1_math_code.yaml")
    assert hparams.hybrid_sharding and [s.name for s in plan.stages] == ["basic", "continual", "cooldown"]
    assert [round(b * 2048 / 1e6, 1) for b in plan.batch_sizes] == [1.8, 1.8, 7.3]
    start = plan.start_tokens[1]
    assert plan.weights(0) == [1.0, 0.0, 0.0]
    assert plan.weights(start + 3_000_000_000) == pytest.approx([0.875, 0.075, 0.05])  # halfway up the ramp
    assert plan.weights(start + 6_000_000_000) == pytest.approx([0.75, 0.15, 0.10])
    assert plan.weights(plan.start_tokens[2] + 1) == pytest.approx([0.75, 0.15, 0.10])
    assert plan.max_tokens == pytest.approx(2e12, rel=1e-3)


def test_v1_1_chinese_is_the_papers_table_7():
    """Appendix A, Table 7: SlimPajama 100% in the basic stage, then 50% / 50% with SkyPile, ramped in
    over the first 6B tokens of the continual stage and kept through the cooldown."""
    hparams, plan = recipe("tiny_llama_v1.1_chinese.yaml")
    assert [source.name for source in hparams.train_data] == ["slimpajama", "skypile"]
    start = plan.start_tokens[1]
    assert plan.weights(0) == [1.0, 0.0] and plan.weights(start - 1) == [1.0, 0.0]
    assert plan.weights(start + 3_000_000_000) == pytest.approx([0.75, 0.25])
    assert plan.weights(start + 6_000_000_000) == pytest.approx([0.5, 0.5])
    assert plan.weights(plan.start_tokens[2] + 1) == pytest.approx([0.5, 0.5])
    assert plan.max_tokens == pytest.approx(2e12, rel=1e-3)


@pytest.mark.parametrize("name", ["tiny_llama_v1.1.yaml", "cpu_demo.yaml"])
def test_other_recipes_parse(name):
    hparams, plan = recipe(name)
    assert plan.max_steps > 0 and Path(hparams.out_dir).parts[0] == "out"


def test_v1_1_wsd_holds_the_learning_rate_until_the_cooldown():
    hparams, plan = recipe("tiny_llama_v1.1_wsd.yaml")
    schedule = hparams.learning_rates()
    cooldown = plan.start_steps[2]
    assert schedule.decay_start(plan) == cooldown
    assert schedule.at(cooldown - 1, plan) == schedule.at(plan.start_steps[1], plan) == 4e-4
    assert schedule.at(cooldown, plan) < 4e-4 and schedule.at(plan.max_steps - 1, plan) == pytest.approx(4e-5)


def test_tinyllama3_is_the_templates_plan():
    """TinyLlama's README template: 4,096 context, 2M-token batches, cosine 4e-4 with 2,000 warmup steps,
    natural language : code = 5:4, 16 GPUs; with the Llama 3 tokenizer's vocabulary and a tied head."""
    hparams, plan = recipe("tiny_llama3.yaml")
    config = hparams.model()
    assert (config.block_size, config.padded_vocab_size, config.tie_embeddings) == (4096, 128256, True)
    assert plan.batch_sizes == [512] and 512 * 4096 == 2_097_152
    schedule = (hparams.learning_rate, hparams.min_lr, hparams.warmup_steps, hparams.lr_schedule)
    assert schedule == (4e-4, 4e-5, 2000, "cosine")
    assert plan.weights(0) == pytest.approx([5 / 9, 4 / 9])
    assert hparams.devices * hparams.num_nodes == 16 and hparams.tokenizer_path.name == "tokenizer.json"


def test_continued_pretraining_starts_from_llama_3_2_1b_with_a_short_warmup():
    hparams, plan = recipe("llama3.2_1b_continued.yaml")
    config = hparams.model()
    assert config.name == "Llama-3.2-1B" and config.rope_scaling and config.block_size == 4096
    from_scratch, _ = recipe("tiny_llama3.yaml")
    assert hparams.initial_checkpoint is not None and hparams.learning_rate < from_scratch.learning_rate
    assert hparams.warmup_steps == round(0.01 * plan.max_steps)
