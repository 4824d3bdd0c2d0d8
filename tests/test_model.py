import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_gpt import GPT, Config, kernels
from lit_gpt.hf import hf_to_lit, lit_to_hf

GQA = Config(
    block_size=64,
    vocab_size=250,
    padding_multiple=64,
    n_layer=3,
    n_head=8,
    n_query_groups=2,
    n_embd=64,
    intermediate_size=96,
    rope_base=500,
)


def hf_llama(config: Config) -> LlamaForCausalLM:
    hf_config = LlamaConfig(
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_query_groups,
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_base,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(hf_config).eval()


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_logits_match_transformers_llama(backend):
    torch.manual_seed(0)
    ours = GPT(GQA).eval()
    for p in ours.parameters():  # break symmetry everywhere, RMSNorm weights included
        p.data.normal_(0, 0.2)
    theirs = hf_llama(GQA)
    theirs.load_state_dict(lit_to_hf(ours.state_dict(), GQA), strict=True)
    idx = torch.randint(0, GQA.vocab_size, (2, GQA.block_size))
    with torch.no_grad(), kernels.use_backend(backend):
        expected = theirs(idx).logits
        actual = ours(idx)
    assert actual.shape == (2, GQA.block_size, GQA.padded_vocab_size)
    assert (actual - expected).abs().max() <= 1e-4


def test_loss_with_targets_equals_cross_entropy_of_the_logits():
    model = GPT(GQA)
    idx = torch.randint(0, GQA.vocab_size, (2, 17))
    fused = model(idx[:, :-1], targets=idx[:, 1:]).loss
    fused.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    separate = kernels.cross_entropy_reference(model(idx[:, :-1]), idx[:, 1:])
    separate.backward()
    torch.testing.assert_close(fused, separate)
    for fused_grad, p in zip(fused_grads, model.parameters(), strict=True):
        torch.testing.assert_close(fused_grad, p.grad, atol=1e-6, rtol=1e-5)


def test_logits_at_some_positions_are_those_rows_of_the_full_logits():
    model = GPT(GQA).eval()
    idx = torch.randint(0, GQA.vocab_size, (3, 9))
    chosen = torch.zeros(3, 9, dtype=torch.bool)
    chosen[0, 2:5] = chosen[2, 8] = True
    with torch.no_grad():
        torch.testing.assert_close(model(idx, logits_at=chosen), model(idx)[chosen])
        assert model(idx, logits_at=torch.zeros_like(chosen)).shape == (0, GQA.padded_vocab_size)


def test_name_map_round_trips():
    state_dict = GPT(GQA).state_dict()
    back = hf_to_lit(lit_to_hf(state_dict, GQA), GQA)
    assert back.keys() == state_dict.keys()
    for name, tensor in state_dict.items():
        assert torch.equal(back[name], tensor), name


def test_kv_cache_decoding_equals_a_full_forward():
    torch.manual_seed(0)
    model = GPT(GQA).eval()
    idx = torch.randint(0, GQA.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2, max_seq_length=32)
        prefill = model(idx[:, :12], input_pos=torch.arange(12))
        steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(12, 20)]
        model.clear_kv_cache()
    incremental = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients_and_recomputes_what_it_says():
    idx = torch.randint(0, GQA.vocab_size, (2, 16))
    grads, calls = {}, {}
    for mode in ("none", "full", "selective"):
        torch.manual_seed(1)
        model = GPT(GQA.replace(n_layer=4), activation_checkpointing=mode)
        counts = [0] * 4
        for i, block in enumerate(model.transformer.h):
            block.register_forward_pre_hook(lambda *_, i=i, c=counts: c.__setitem__(i, c[i] + 1))
        model(idx[:, :-1], targets=idx[:, 1:]).loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
        calls[mode] = counts
    for mode in ("full", "selective"):
        for name, grad in grads["none"].items():
            torch.testing.assert_close(grads[mode][name], grad, atol=1e-6, rtol=1e-6, msg=f"{mode} {name}")
    # a checkpointed block runs its forward twice: once in the forward pass, again in the backward pass
    assert calls == {"none": [1, 1, 1, 1], "full": [2, 2, 2, 2], "selective": [2, 1, 2, 1]}
    with pytest.raises(ValueError, match="must be none, full or selective"):
        GPT(GQA, activation_checkpointing=True)


class CountingLinear(torch.nn.Linear):
    """A stand-in for a module swap (float8, LoRA): an nn.Linear that counts its calls."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingLinear.calls += 1
        return super().forward(x)


def test_a_module_swap_reaches_every_linear_layer():
    """Every block's projections run through their nn.Linear modules in the training loss (the fused
    loss takes the output layer's weight), and the output layer too when logits are asked for."""
    model = GPT(GQA)
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = CountingLinear
    idx = torch.randint(0, GQA.vocab_size, (2, 9))
    reference = GPT(GQA)
    reference.load_state_dict(model.state_dict())
    CountingLinear.calls = 0
    loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
    assert CountingLinear.calls == 5 * GQA.n_layer  # attn.attn, attn.proj, mlp.fc_1, mlp.fc_2, mlp.proj
    torch.testing.assert_close(loss, reference(idx[:, :-1], targets=idx[:, 1:]).loss)
    CountingLinear.calls = 0
    torch.testing.assert_close(model(idx), reference(idx))
    assert CountingLinear.calls == 5 * GQA.n_layer + 1


def test_initialisation_follows_tinyllama():
    torch.manual_seed(0)
    config = Config(n_layer=2, n_head=4, n_embd=256, intermediate_size=512, vocab_size=1024, block_size=16)
    model = GPT(config)
    small_init = math.sqrt(2 / 5 / config.n_embd)
    residual_init = 1 / math.sqrt(config.n_embd) / config.n_layer
    for name, p in model.named_parameters():
        if name.endswith("norm_1.weight") or name.endswith("norm_2.weight") or name == "transformer.ln_f.weight":
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
            assert p.std().item() == pytest.approx(residual_init, rel=0.05), name
        else:
            assert p.std().item() == pytest.approx(small_init, rel=0.05), name


def test_model_can_learn_a_fixed_batch():
    torch.manual_seed(0)
    config = Config(
        block_size=32, vocab_size=128, n_layer=2, n_head=4, n_query_groups=2, n_embd=64, intermediate_size=128
    )
    model = GPT(config)
    batch = torch.randint(0, config.vocab_size, (4, config.block_size + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = kernels.cross_entropy_reference(model(batch[:, :-1]), batch[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first == pytest.approx(math.log(config.vocab_size), rel=0.1)  # starts at chance
    assert loss.item() < 0.05


def test_too_long_input_is_a_clear_error():
    model = GPT(GQA)
    with pytest.raises(ValueError, match="exceeds the model's block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_torch_compile_gives_the_eager_loss_and_gradients():
    torch.manual_seed(0)
    config = Config(
        block_size=32, vocab_size=128, n_layer=2, n_head=4, n_query_groups=2, n_embd=64, intermediate_size=128
    )
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 17))
    results = []
    for forward in (model, torch.compile(model)):
        model.zero_grad()
        loss = kernels.cross_entropy_reference(forward(idx[:, :-1]), idx[:, 1:])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
