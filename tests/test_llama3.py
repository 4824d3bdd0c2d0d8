"""The Llama 3 generation: a tied head and llama3 RoPE scaling as ``transformers`` computes them,
conversion both ways, and the named shapes' sizes. The reference models are built here with random
weights and ``save_pretrained`` (no download)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lit_gpt import GPT, Config, kernels
from lit_gpt.cli import load_script
from lit_gpt.config import LLAMA_3_2_SCALING
from lit_gpt.data.shards import write_shard
from lit_gpt.errors import InvalidInput
from lit_gpt.hf import hf_llama_config
from lit_gpt.schedule import cosine_lr
from lit_gpt.weights import initial_weights, load_model, read_model_config

from conftest import DEMO_BPE_TOKENIZER, REPO_ROOT, TINY, metrics, torchrun, train_args

convert_lit = load_script(REPO_ROOT / "scripts" / "convert_lit_checkpoint.py").convert_lit_checkpoint
convert_hf = load_script(REPO_ROOT / "scripts" / "convert_hf_checkpoint.py").convert_hf_checkpoint

# Llama 3.2's scaling with the original context cut from 8,192 to 64 positions, so that a CPU test reaches
# past it: with rope_theta 500,000 and head_dim 64 the frequencies fall in all three bands (kept,
# interpolated, divided by the factor).
SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def llama3_directory(directory, tie: bool = True) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=4096,  # the demo tokenizer.json's, whose files go beside the weights
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=192,
        rope_theta=500000.0,
        rope_scaling=dict(SCALING),
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # norms included: every weight matters
            parameter.normal_(0, 0.1)
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_BPE_TOKENIZER / name, directory / name)
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_llama3_frequencies_equal_transformers():
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=500000.0, rope_scaling=dict(SCALING))
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    default = 1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))
    ours = kernels.llama3_frequencies(default, SCALING)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    wavelength = 2 * torch.pi / default
    assert (wavelength < 16).any() and ((wavelength > 16) & (wavelength < 64)).any() and (wavelength > 64).any()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_llama3_model_converts_both_ways_with_transformers_logits(tmp_path, tie):
    """Beyond the scaling's original context too; the lit checkpoint stores a tied head once, and the
    model converted back loads without missing or unexpected keys and gives the same logits."""
    theirs = llama3_directory(tmp_path / "hf", tie=tie)
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    stored = load_file(tmp_path / "lit" / "model.safetensors")
    assert ("lm_head.weight" in stored) is not tie
    assert sum(t.numel() for t in stored.values()) == theirs.num_parameters()
    config = json.loads((tmp_path / "lit" / "model_config.json").read_text())
    assert config["tie_embeddings"] is tie and config["rope_scaling"] == SCALING and config["rope_base"] == 500000.0

    ours, _ = load_model(tmp_path / "lit")
    assert (ours.lm_head.weight is ours.transformer.wte.weight) is tie
    idx = torch.randint(0, 4096, (2, 192))
    with torch.no_grad(), kernels.use_backend("reference"):
        expected = theirs(idx).logits
        actual = ours(idx)
    assert relative_error(actual, expected) < 1e-4
    assert relative_error(actual[:, 64:], expected[:, 64:]) < 1e-4  # the positions past the original context

    convert_lit(tmp_path / "lit", tmp_path / "back")
    back, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "back", attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ("lm_head.weight" in load_file(tmp_path / "back" / "model.safetensors")) is not tie
    assert (back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()) is tie
    assert back.config.tie_word_embeddings is tie
    assert back.config.rope_parameters == theirs.config.rope_parameters
    with torch.no_grad():
        assert torch.equal(back.eval()(idx).logits, expected)


def test_a_tied_head_trains_as_one_weight():
    """Its gradient is the sum of the embedding's and the head's in the same model untied."""
    tied = Config(block_size=32, vocab_size=128, n_layer=2, n_head=4, n_embd=64, intermediate_size=96)
    tied = tied.replace(tie_embeddings=True)
    torch.manual_seed(0)
    model = GPT(tied)
    untied = GPT(tied.replace(tie_embeddings=False))
    untied.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=False)
    untied.lm_head.weight.data.copy_(model.lm_head.weight)
    idx = torch.randint(0, 128, (2, 17))
    for m in (model, untied):
        m(idx[:, :-1], targets=idx[:, 1:]).loss.backward()
    assert len(list(model.parameters())) == len(list(untied.parameters())) - 1
    assert "lm_head.weight" not in model.state_dict()
    expected = untied.transformer.wte.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(model.transformer.wte.weight.grad, expected)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    optimizer.step()
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize(
    "name, published",
    [
        ("Llama-3.2-1B", 1_235_814_400),
        ("Llama-3.2-3B", None),
        ("SmolLM2-135M", None),
        ("SmolLM2-360M", None),
        ("SmolLM2-1.7B", None),
        ("tiny_LLaMA3_2b", 1_965_672_448),  # REFERENCE.md's TinyLlama3 figure
    ],
)
def test_named_llama3_generation_shapes_have_transformers_parameter_counts(name, published):
    config = Config.from_name(name)
    with torch.device("meta"):
        ours = sum(p.numel() for p in GPT(config).parameters())
        hf = hf_llama_config(config, torch.bfloat16)
        theirs = LlamaForCausalLM(LlamaConfig(**hf)).num_parameters()
    assert ours == theirs and config.tie_embeddings
    assert published is None or ours == published  # Llama 3.2 1B: 1.24B as released


def test_unsupported_rope_scaling_is_refused_in_one_line(tmp_path):
    with pytest.raises(InvalidInput, match="rope_scaling must be of rope_type llama3"):
        Config(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    llama3_directory(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 500000.0}
    config.pop("rope_scaling", None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="RoPE scaling of type 'yarn' is not supported"):
        convert_hf(tmp_path / "hf", tmp_path / "lit")


def test_a_tied_model_trains_on_two_processes_as_on_one_and_resumes_with_one_copy(tmp_path):
    """FSDP2 shards the one weight once: the losses on 2 processes equal those on 1 (1e-6), the checkpoint
    holds the embedding and no head, and a resume from step 2 gives steps 3-4 bitwise."""
    data = tmp_path / "data"
    for name in ("a", "b", "val"):
        (data / name).mkdir(parents=True)
        write_shard(data / name / "x.bin", np.random.default_rng(0).integers(0, 4096, 33 * 64, dtype=np.uint16))
    tied = TINY[:-1] + ", tie_embeddings: true}"
    script = str(REPO_ROOT / "pretrain" / "tinyllama.py")

    def train(out: str, *extra: str, processes: int = 1) -> dict[int, str]:
        args = train_args(data, tmp_path / out, "--max_steps", "4", "--save_interval", "2", "--model_config", tied)
        launcher = [*torchrun(2), script] if processes == 2 else [sys.executable, script]
        subprocess.run([*launcher, *args, "--devices", str(processes), *extra], check=True, capture_output=True)
        return metrics(tmp_path / out, "train_loss")

    one, two = train("one"), train("two", processes=2)
    assert sorted(one) == [1, 2, 3, 4]
    for step in one:
        assert float(two[step]) == pytest.approx(float(one[step]), rel=1e-6, abs=0)
    stored = dcp.FileSystemReader(tmp_path / "two" / "step-00000002").read_metadata().state_dict_metadata
    assert "model.transformer.wte.weight" in stored and not [key for key in stored if "lm_head" in key]
    shutil.rmtree(tmp_path / "one" / "step-00000004")
    (tmp_path / "one" / "metrics.csv").unlink()
    resumed = train("one", "--resume", "true")
    assert {step: resumed[step] for step in (3, 4)} == {step: one[step] for step in (3, 4)}


MEASURE_LOSS = """
import re, sys, torch
from lit_gpt import kernels
dtype = getattr(torch, sys.argv[1])
T, V, d = 4096, 128256, 64
generator = torch.Generator().manual_seed(0)
x = (torch.randn(T, d, generator=generator) * 0.1).to(dtype).requires_grad_()
weight = (torch.randn(V, d, generator=generator) * 0.1).to(dtype).requires_grad_()
targets = torch.randint(0, V, (T,), generator=generator)

def status(key):
    return int(re.search(rf"{key}:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # the peak from here on (VmHWM), Linux 4.0+
before = status("VmRSS")
kernels.linear_cross_entropy(x, weight, targets).loss.backward()
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_loss_at_llama_3s_vocabulary_holds_chunks_not_the_logits(dtype):
    """One 4,096-token row at 128,256 ids: forward and backward of the training loss (CPU) peak below four
    fp32 chunks of logits (16 chunks of 256 rows here) plus two fp32 copies of the weight (measured: about
    240 MiB in fp32 with PyTorch's chunked loss, 470 MiB in bf16 with ours), under a third of the 2 GB
    that the fp32 logits alone would take."""
    result = subprocess.run([sys.executable, "-c", MEASURE_LOSS, dtype], capture_output=True, text=True, check=True)
    peak = int(result.stdout)
    vocabulary, rows, width = 128256, 4096, 64
    chunk = kernels.default_chunk_rows(vocabulary, rows) * vocabulary * 4
    logits = rows * vocabulary * 4
    assert peak < 4 * chunk + 2 * vocabulary * width * 4 < logits / 3, (peak, chunk, logits)


def test_forty_adamw_steps_from_a_converted_checkpoint_give_transformers_losses(tmp_path):
    """Continued pretraining as a user runs it: a Llama-3-style HF model (tied, llama3 rope scaling, blocks of
    128 tokens past its original 64) converted, then 40 steps of pretrain/tinyllama.py with
    --initial_checkpoint; transformers' model trained by a plain loop with the same AdamW, schedule, clipping
    and batches gives the same losses (1e-4). The data is one shard of 8 blocks and the global batch is 8, so
    every step sees all of them (in an order that a mean does not see)."""
    theirs = llama3_directory(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    config = json.loads((tmp_path / "lit" / "model_config.json").read_text())
    blocks = np.random.default_rng(0).integers(0, 4096, (8, 129), dtype=np.uint16)
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "train_x.bin", blocks.reshape(-1))
    steps, lr, min_lr, warmup = 40, 1e-3, 1e-4, 5
    options = dict(
        model_config=json.dumps({**config, "block_size": 128}),
        initial_checkpoint=tmp_path / "lit",
        tokenizer_path=tmp_path / "lit",
        train_data=f"[{{name: x, path: {tmp_path / 'data'}}}]",
        val_data="null",
        out_dir=tmp_path / "out",
        precision="32-true",
        global_batch_size=8,
        micro_batch_size=8,
        max_steps=steps,
        learning_rate=lr,
        min_lr=min_lr,
        warmup_steps=warmup,
        spike_guard="false",
        log_interval=1,
        save_interval=steps,
    )
    command = [sys.executable, str(REPO_ROOT / "pretrain" / "tinyllama.py"), "--model_name", "tiny_LLaMA_5M"]
    command += [item for key, value in options.items() for item in (f"--{key}", str(value))]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = metrics(tmp_path / "out", "train_loss")

    theirs.train()
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    tokens = torch.from_numpy(blocks.astype(np.int64))
    expected = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, lr, min_lr, warmup, steps)
        logits = theirs(tokens[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        expected.append(loss.item())
    assert sorted(ours) == list(range(1, steps + 1))
    assert expected[-1] < expected[0] - 1  # it learns: the comparison is not of 40 equal numbers
    for step, loss in enumerate(expected, start=1):
        assert float(ours[step]) == pytest.approx(loss, rel=1e-4), step


def test_an_initial_checkpoint_of_another_function_is_refused_naming_the_fields(tmp_path):
    """Llama 3.2's weights with the run's model left without its rope scaling (or untied) would silently
    train another model; the context length alone may differ."""
    llama3_directory(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    config = read_model_config(tmp_path / "lit")
    assert initial_weights(tmp_path / "lit", config.replace(block_size=64)).keys() == GPT(config).state_dict().keys()
    with pytest.raises(InvalidInput, match=r"rope_scaling \{.*\}, not None; tie_embeddings True, not False"):
        initial_weights(tmp_path / "lit", config.replace(rope_scaling=None, tie_embeddings=False))
    with pytest.raises(InvalidInput, match="Unknown model config field.s. n_layers; the fields are name, "):
        Config.from_name("tiny_LLaMA_5M", n_layers=2)


def test_a_converted_llama_3_2_checkpoint_starts_the_continued_pretraining_recipe(tmp_path):
    """llama3.2_1b_continued.yaml names Llama-3.2-1B at block_size 4096: a checkpoint converted from a
    config.json as Meta publishes it (rope scaling, rms_norm_eps 1e-5, tied, 131,072 positions; the shape
    made small) passes --initial_checkpoint's check against that named config at the same small shape."""
    shape = dict(n_layer=1, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128)
    published = LlamaConfig(
        vocab_size=128256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA_3_2_SCALING),
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(published).save_pretrained(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    config = Config.from_name("Llama-3.2-1B", **shape, block_size=4096)
    weights = initial_weights(tmp_path / "lit", config)
    assert set(weights) == set(GPT(config).state_dict()) and "lm_head.weight" not in weights
