"""lit <-> Hugging Face conversion, checked against transformers, and generation against its generate()."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lit_gpt import GPT, Config
from lit_gpt.weights import load_model_weights, read_model_config

from conftest import DEMO_TOKENIZER, REPO_ROOT, TOKENIZER, free_port, load_script, train_args

convert_lit = load_script("scripts/convert_lit_checkpoint.py").convert_lit_checkpoint
convert_hf = load_script("scripts/convert_hf_checkpoint.py").convert_hf_checkpoint
generate_script = load_script("scripts/generate.py").main

GQA = Config(block_size=64, vocab_size=4096, n_layer=2, n_head=8, n_query_groups=2, n_embd=64, intermediate_size=96)
MIXED_TEXT = [
    "Grüße, 世界! Ünïcödé — naïve café 🦙 and ∑x²",
    "digits 0123456789, 3.14159e-10 and the year 2023",
    "runs   of    spaces,\ttabs\t\tand\n\nblank lines\n   indented",
    "def f(x: int) -> int:\n    return {'a': [x ** 2 for _ in range(3)]}  # comment\n",
]


def lit_checkpoint(directory: Path, config: Config = GQA) -> GPT:
    """A lit checkpoint directory holding a random model, as convert_hf_checkpoint writes one."""
    model = GPT(config)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    directory.mkdir(parents=True)
    save_file(model.state_dict(), directory / "model.safetensors")
    (directory / "model_config.json").write_text(json.dumps(config.to_dict()))
    (directory / "tokenizer.model").write_bytes(DEMO_TOKENIZER.read_bytes())
    return model.eval()


def test_lit_to_hf_loads_in_transformers_with_the_same_logits_and_tokens(tmp_path):
    ours = lit_checkpoint(tmp_path / "lit")
    convert_lit(tmp_path / "lit", tmp_path / "hf")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()} == {
        p.name: 0o666 & ~umask for p in (tmp_path / "hf").iterdir()
    }  # safetensors alone would make model.safetensors 0600
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    idx = torch.randint(0, GQA.vocab_size, (2, 40))
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx)).abs().max() <= 1e-5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in MIXED_TEXT:
        assert tokenizer(text)["input_ids"] == TOKENIZER.encode(text), text
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_sharded_output_with_an_index(tmp_path):
    ours = lit_checkpoint(tmp_path / "lit")
    convert_lit(tmp_path / "lit", tmp_path / "hf", dtype="bfloat16", max_shard_size=200_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert theirs.config.torch_dtype == torch.bfloat16 or theirs.dtype == torch.bfloat16
    expected = ours.transformer.wte.weight.to(torch.bfloat16)
    assert torch.equal(theirs.model.embed_tokens.weight, expected)


def hf_directory(directory: Path, tie: bool = False) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=500.0,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return model


def test_hf_to_lit_to_hf_is_bitwise_identical(tmp_path):
    hf_directory(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    convert_lit(tmp_path / "lit", tmp_path / "back")
    original, back = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
    keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "head_dim",
        "model_type",
        "architectures",
    ]
    first = LlamaConfig.from_pretrained(tmp_path / "hf").to_dict()
    second = LlamaConfig.from_pretrained(tmp_path / "back").to_dict()
    assert {k: first.get(k) for k in keys} == {k: second.get(k) for k in keys}
    assert first.get("rope_parameters") == second.get("rope_parameters")


def test_pytorch_bin_checkpoints_load_without_pickled_code(tmp_path):
    model = hf_directory(tmp_path / "hf")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    convert_hf(tmp_path / "bin", tmp_path / "lit")
    assert torch.equal(load_model_weights(tmp_path / "lit")["lm_head.weight"], model.lm_head.weight)

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"model.embed_tokens.weight": Payload()}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):
        convert_hf(tmp_path / "bin", tmp_path / "lit2")


def test_tied_embeddings_stay_one_weight(tmp_path):
    """The lit checkpoint stores the embedding once and reads back with the head under its own name."""
    model = hf_directory(tmp_path / "hf", tie=True)
    convert_hf(tmp_path / "hf", tmp_path / "lit")
    weights = load_model_weights(tmp_path / "lit")
    assert "lm_head.weight" not in weights and "lm_head.weight" not in load_file(tmp_path / "lit" / "model.safetensors")
    ours = GPT(read_model_config(tmp_path / "lit"))
    ours.load_state_dict(weights)  # strict: the head is the embedding
    assert torch.equal(ours.lm_head.weight, model.model.embed_tokens.weight)


def test_refusals_name_the_problem(tmp_path):
    hf_directory(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    weights = load_file(tmp_path / "hf" / "model.safetensors")

    def variant(name: str, new_config: dict, new_weights: dict) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(new_config))
        save_file(new_weights, directory / "model.safetensors")
        return directory

    gpt2 = variant("gpt2", {**config, "model_type": "gpt2"}, weights)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a Llama model"):
        convert_hf(gpt2, tmp_path / "out")
    missing = variant("missing", config, {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(KeyError, match="transformer.h.1.mlp.fc_2.weight"):
        convert_hf(missing, tmp_path / "out")
    wrong = dict(weights, **{"model.norm.weight": torch.ones(65)})
    with pytest.raises(ValueError, match="tensor 'transformer.ln_f.weight' has shape \\(65,\\), expected \\(64,\\)"):
        convert_hf(variant("wrong", config, wrong), tmp_path / "out")
    extra = dict(weights, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(8)})
    with pytest.raises(KeyError, match="model.layers.0.self_attn.q_norm.weight"):
        convert_hf(variant("extra", config, extra), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_generate_greedy_equals_transformers_generate(tmp_path):
    lit_checkpoint(tmp_path / "lit")
    convert_lit(tmp_path / "lit", tmp_path / "hf")
    prompt = "def fibonacci(n):"
    text = generate_script(tmp_path / "lit", prompt=prompt, max_new_tokens=20, temperature=0.0)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([TOKENIZER.encode(prompt)])
    expected = theirs.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=TOKENIZER.eos_id)[0]
    assert text == TOKENIZER.decode(expected.tolist())
    assert len(expected) > len(ids[0])


def test_a_batch_of_prompts_decodes_to_each_prompts_own_greedy_tokens():
    """Left-padded prompts of five lengths decoded together give what each gives alone, stop rules too."""
    from lit_gpt.generation import generate, greedy_batch

    model = GPT(Config.from_name("tiny_LLaMA_5M")).eval()
    with torch.no_grad():  # larger weights than the initialisation: continuations that differ by prompt
        for parameter in model.parameters():
            parameter.mul_(8 if parameter.dim() > 1 else 1)
    draws = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 4096, (n,), generator=draws).tolist() for n in (3, 17, 9, 30, 1)]
    with torch.no_grad():
        alone = [generate(model, prompt, 12) for prompt in prompts]
        assert greedy_batch(model, prompts, 12) == alone
        assert len({tuple(tokens) for tokens in alone}) == 5
        eos = alone[1][4]  # a token the second row emits: it stops there, the others go on unless they emit it
        expected = [tokens[: tokens.index(eos) + 1] if eos in tokens else tokens for tokens in alone]
        assert greedy_batch(model, prompts, 12, eos_id=eos) == expected
        assert greedy_batch(model, prompts, 12, finished=lambda tokens: len(tokens) == 3) == [t[:3] for t in alone]


def test_sampling_is_seeded_and_respects_top_k(tmp_path):
    lit_checkpoint(tmp_path / "lit")
    runs = [
        generate_script(tmp_path / "lit", prompt="x", max_new_tokens=15, temperature=1.0, seed=s) for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] != runs[2]
    from lit_gpt.generation import sample

    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    draws = {sample(logits, 1.0, 2, None, torch.Generator().manual_seed(i)) for i in range(50)}
    assert draws == {1, 2}
    assert {sample(logits, 1.0, None, 0.5, torch.Generator().manual_seed(i)) for i in range(50)} == {1}


def test_two_process_training_checkpoint_converts_on_one_process(tmp_path):
    data = tmp_path / "data"
    import numpy as np

    from lit_gpt.data.shards import write_shard

    for name in ("a", "b", "val"):
        (data / name).mkdir(parents=True)
        write_shard(data / name / "x.bin", np.random.default_rng(0).integers(0, 4096, 33 * 64, dtype=np.uint16))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    args = train_args(data, tmp_path / "out", "--max_steps", "2", "--devices", "2")
    subprocess.run([*torchrun, str(REPO_ROOT / "pretrain" / "tinyllama.py"), *args], check=True, capture_output=True)
    checkpoint = tmp_path / "out" / "step-00000002"
    assert len(list(checkpoint.glob("*.distcp"))) == 2  # sharded over the two ranks

    convert_lit(checkpoint, tmp_path / "hf")  # in this single process
    config = Config(**json.loads((checkpoint / "model_config.json").read_text()))
    ours = GPT(config)
    ours.load_state_dict(load_model_weights(checkpoint))
    initial = GPT(config)
    assert not torch.equal(ours.lm_head.weight, initial.lm_head.weight)  # trained, not the initialisation
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    idx = torch.randint(0, 4096, (1, 32))
    with torch.no_grad():
        assert (theirs(idx).logits - ours.eval()(idx)).abs().max() <= 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("hello world")["input_ids"] == TOKENIZER.encode("hello world")
