import math

import numpy as np
import pytest

from lit_gpt.schedule import LearningRate, Stage, StagePlan, cosine_lr

RECIPE = dict(max_lr=4e-4, min_lr=4e-5, warmup_steps=2000, max_steps=10_000)


def test_lr_at_the_landmarks_equals_hand_computed_values():
    assert cosine_lr(0, **RECIPE) == pytest.approx(4e-4 / 2000)  # first step already trains
    assert cosine_lr(999, **RECIPE) == pytest.approx(2e-4)
    assert cosine_lr(1999, **RECIPE) == pytest.approx(4e-4)  # end of warmup
    assert cosine_lr(2000, **RECIPE) == pytest.approx(4e-4)  # cosine starts at the top
    middle = 2000 + (10_000 - 1 - 2000) / 2
    assert cosine_lr(middle, **RECIPE) == pytest.approx((4e-4 + 4e-5) / 2)  # cos(pi / 2) = 0
    quarter = 2000 + (10_000 - 1 - 2000) / 4
    assert cosine_lr(quarter, **RECIPE) == pytest.approx(4e-5 + 0.5 * (1 + math.sqrt(0.5)) * 3.6e-4)
    assert cosine_lr(9999, **RECIPE) == 4e-5  # the last step really reaches min_lr
    assert cosine_lr(20_000, **RECIPE) == 4e-5


def test_lr_rises_then_falls_monotonically():
    lrs = [cosine_lr(step, **RECIPE) for step in range(10_000)]
    assert all(a < b for a, b in zip(lrs[:1999], lrs[1:2000], strict=True))
    assert all(a >= b for a, b in zip(lrs[2000:-1], lrs[2001:], strict=True))


SOURCES = {"slimpajama": 0.693584, "starcoder": 0.306416, "math": 0.0}


def v11_plan() -> StagePlan:
    """TinyLlama v1.1 in miniature: block 10, batch 4 sequences (40 tokens), cooldown batch 16."""
    stages = [
        Stage("basic", tokens=400),
        Stage("continual", tokens=800, weights={"slimpajama": 0.5, "starcoder": 0.2, "math": 0.3},
              ramp_from=SOURCES, ramp_tokens=200),
        Stage("cooldown", tokens=640, global_batch_size=16, weights={"slimpajama": 0.5, "math": 0.5}),
    ]  # fmt: skip
    return StagePlan(stages, SOURCES, global_batch_size=4, block_size=10)


def test_stage_transitions_change_batch_size_at_the_right_steps():
    plan = v11_plan()
    assert plan.start_steps == [0, 10, 30, 34]
    assert plan.max_steps == 34 and plan.max_tokens == 1840
    assert [plan.global_batch_size(s) for s in (0, 9, 10, 29, 30, 33)] == [4, 4, 4, 4, 16, 16]
    assert [plan.tokens_before(s) for s in (0, 10, 29, 30, 31, 34)] == [0, 400, 1160, 1200, 1360, 1840]


def test_mixture_ramps_linearly_then_holds():
    plan = v11_plan()
    assert plan.weights(0) == plan.weights(399) == [0.693584, 0.306416, 0.0]
    assert plan.weights(400) == pytest.approx([0.693584, 0.306416, 0.0])  # ramp starts where stage 1 ended
    assert plan.weights(500) == pytest.approx([(0.693584 + 0.5) / 2, (0.306416 + 0.2) / 2, 0.15])
    assert plan.weights(600) == plan.weights(1199) == [0.5, 0.2, 0.3]
    assert plan.weights(1200) == plan.weights(5000) == [0.5, 0.0, 0.5]  # cooldown, and beyond the end


def test_bad_stages_are_refused():
    with pytest.raises(ValueError, match="unknown data sources \\['proof_pile'\\]"):
        StagePlan([Stage("x", 100, weights={"proof_pile": 1.0})], SOURCES, 4, 10)
    with pytest.raises(ValueError, match="at least one stage"):
        StagePlan([], SOURCES, 4, 10)


def test_mixture_of_many_token_counts_at_once_and_positions_before_a_step():
    plan = v11_plan()
    rows = plan.mixture(np.array([0, 399, 500, 600, 1199, 1200, 5000]))
    ramped = [(0.693584 + 0.5) / 2, (0.306416 + 0.2) / 2, 0.15]
    start, continual, cooldown = [0.693584, 0.306416, 0.0], [0.5, 0.2, 0.3], [0.5, 0.0, 0.5]
    assert np.allclose(rows, [start, start, ramped, continual, continual, cooldown, cooldown], rtol=0, atol=1e-12)
    assert [plan.positions_before(s) for s in (0, 10, 30, 31, 34)] == [0, 40, 120, 136, 184]


def one_stage(max_steps: int, batch: int = 4) -> StagePlan:
    return StagePlan([Stage("all", tokens=max_steps * batch * 10)], SOURCES, global_batch_size=batch, block_size=10)


@pytest.mark.parametrize(
    "shape, middle",
    [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd_at_its_landmarks(shape, middle):
    schedule = LearningRate(1.0, 0.1, warmup_steps=10, schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    plan = one_stage(110)  # decay over the last 22 steps: 88 ... 109
    assert schedule.decay_start(plan) == 88
    assert schedule.at(0, plan) == pytest.approx(0.1)  # warmup: 1/10 of the top
    assert schedule.at(9, plan) == schedule.at(10, plan) == schedule.at(87, plan) == 1.0  # stable
    assert schedule.at(98, plan) == pytest.approx(0.1 + 0.9 * middle)  # halfway through the decay
    assert schedule.at(109, plan) == pytest.approx(0.1)  # the last step reaches min_lr


def test_linear_schedule_at_its_landmarks():
    schedule = LearningRate(1.0, 0.0, warmup_steps=10, schedule="linear")
    plan = one_stage(111)
    assert [schedule.at(s, plan) for s in (9, 10, 60, 110)] == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_cosine_is_the_default_and_equals_cosine_lr():
    plan = one_stage(10_000)
    schedule = LearningRate(4e-4, 4e-5, 2000)
    assert [schedule.at(s, plan) for s in (0, 1999, 5000, 9999)] == [
        cosine_lr(s, **RECIPE) for s in (0, 1999, 5000, 9999)
    ]


def test_extending_a_wsd_run_in_its_stable_phase_keeps_the_learning_rate():
    schedule = LearningRate(1.0, 0.1, warmup_steps=10, schedule="wsd")
    planned, extended = one_stage(200), one_stage(300)  # the budget raised on resume at step 150
    assert [schedule.at(s, planned) for s in range(151)] == [schedule.at(s, extended) for s in range(151)]
    assert schedule.at(150, extended) == 1.0 and schedule.decay_start(extended) == 240


def test_a_stage_can_start_the_decay_and_batch_scaling_follows_the_stage_batch():
    stages = [Stage("basic", tokens=800), Stage("cooldown", tokens=640, global_batch_size=16, lr_decay=True)]
    plan = StagePlan(stages, SOURCES, global_batch_size=4, block_size=10)  # 20 steps, then 4 steps
    schedule = LearningRate(1.0, 0.1, 2, schedule="wsd", decay_shape="linear", batch_scaling="sqrt")
    assert schedule.decay_start(plan) == 20
    assert schedule.at(19, plan) == 1.0
    assert schedule.at(20, plan) == pytest.approx(2 * (0.1 + 0.9 * 0.75))  # sqrt(16 / 4) = 2, a quarter decayed
    assert schedule.at(23, plan) == pytest.approx(2 * 0.1)


def test_a_decay_fraction_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="lr_decay_fraction must be in \\(0, 1\\], got 1.5"):
        LearningRate(1.0, 0.1, 10, schedule="wsd", decay_fraction=1.5)
