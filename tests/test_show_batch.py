"""scripts/show_batch.py against the loader itself, read step by step from the start."""

import re
import subprocess
import sys

from lit_gpt.data.loader import create_loader
from lit_gpt.data.shards import read_shard
from lit_gpt.schedule import Stage, StagePlan

from conftest import DEMO_TOKENIZER, REPO_ROOT

RECIPE = """
model_name: tiny_LLaMA_5M
model_config: {{n_layer: 2, n_embd: 64, n_head: 4, n_query_groups: 2, intermediate_size: 128, block_size: 32}}
tokenizer_path: {tokenizer}
train_data:
  - {{name: a, path: {data}/a, weight: 0.7}}
  - {{name: b, path: {data}/b, weight: 0.3}}
devices: 2
global_batch_size: 8
micro_batch_size: 2
seed: 7
stages:
  - {{name: first, tokens: 768}}
  - {{name: second, tokens: 1536, global_batch_size: 16, weights: {{b: 1.0}}, ramp_from: {{a: 1.0}}, ramp_tokens: 600}}
"""
ROW = re.compile(r"rank (\d) micro-batch (\d) \| position [\d,]+ \| (\w) (\S+) block (\d+) \| ids \[([\d, ]+)\]")


def test_show_batch_prints_the_rows_each_rank_reads_at_a_step(data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(tokenizer=DEMO_TOKENIZER, data=data))
    step = 4  # in the second stage: 16 sequences, 4 micro-batches of 2 per rank
    command = [sys.executable, str(REPO_ROOT / "scripts" / "show_batch.py"), "--recipe", str(recipe), "--step", "4"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "step 4 (stage second): 16 sequences, positions 40-55" in result.stdout
    printed = [ROW.search(line).groups() for line in result.stdout.splitlines() if line.startswith("rank")]
    assert len(printed) == 16

    plan = StagePlan(
        [Stage("first", 768), Stage("second", 1536, 16, {"b": 1.0}, {"a": 1.0}, 600)], {"a": 0.7, "b": 0.3}, 8, 32
    )
    expected = []
    for rank in range(2):
        loader = create_loader(
            [data / "a", data / "b"], 32, 2, plan.global_batch_size, plan.mixture, seed=7, rank=rank, world_size=2
        )
        batches = iter(loader)
        for earlier in range(step):
            for _ in range(plan.global_batch_size(earlier) // 4):
                next(batches)
        expected += [(rank, micro, row[:12]) for micro in range(4) for row in next(batches).tolist()]
    assert [(int(r), int(m), [int(i) for i in ids.split(", ")]) for r, m, *_, ids in printed] == expected
    for _, _, source, shard, block, ids in printed:  # each row's label says where its tokens are
        tokens = read_shard(data / source / shard)[int(block) * 33 :][:12]
        assert tokens.tolist() == [int(i) for i in ids.split(", ")]
