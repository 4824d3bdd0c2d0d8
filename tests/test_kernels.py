"""Each kernel's fast path against its reference, and each reference against an independent formula."""

import pytest
import torch

from lit_gpt import kernels

from conftest import DEVICES


def values_and_grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*inputs)
    generator = torch.Generator(out.device).manual_seed(0)
    out.backward(torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype))
    return out.detach(), [x.grad for x in inputs if x.requires_grad]


def assert_same(fast, reference, atol, rtol):
    (fast_out, fast_grads), (ref_out, ref_grads) = fast, reference
    torch.testing.assert_close(fast_out, ref_out, atol=atol, rtol=rtol)
    for fast_grad, ref_grad in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast_grad, ref_grad, atol=atol, rtol=rtol)


# bf16 keeps 8 bits of mantissa; gradients summed over many rows (a norm's weight) differ by a few ulps.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-1, rtol=5e-2)}


def both_backends(fn, *inputs):
    with kernels.use_backend("fused"):
        fast = values_and_grads(fn, *inputs)
    with kernels.use_backend("reference"):
        reference = values_and_grads(fn, *inputs)
    return fast, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_fused_equals_reference(device, dtype):
    x = torch.randn(3, 17, 64, device=device, dtype=dtype)
    weight = torch.randn(64, device=device, dtype=dtype)
    assert_same(*both_backends(lambda x, w: kernels.rms_norm(x, w, 1e-5), x, weight), **TOLERANCE[dtype])


def test_rms_norm_reference_is_llama_rmsnorm():
    x = torch.randn(4, 8, dtype=torch.float64)
    weight = torch.rand(8, dtype=torch.float64)
    expected = torch.stack([weight * row / (row.square().sum() / 8 + 1e-6).sqrt() for row in x])
    torch.testing.assert_close(kernels.rms_norm_reference(x, weight, 1e-6), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_fused_equals_reference(device, dtype):
    x = torch.randn(2, 16, 4, 32, device=device, dtype=dtype)
    cos, sin = kernels.rope_cache(torch.arange(16, device=device), 32, 10000)
    with kernels.use_backend("fused"):
        fast = values_and_grads(lambda x: kernels.apply_rotary(x, cos, sin), x)
    reference = values_and_grads(lambda x: kernels.apply_rotary_reference(x, cos, sin), x)
    assert_same(fast, reference, **TOLERANCE[dtype])


def test_rotary_reference_rotates_each_half_pair_as_a_complex_number():
    T, D, base = 9, 16, 10000
    x = torch.randn(1, T, 2, D, dtype=torch.float64)
    cos, sin = kernels.rope_cache(torch.arange(T), D, base)
    actual = kernels.apply_rotary_reference(x, cos.double(), sin.double())
    # Dimension j pairs with j + D/2 (rotate-half); the pair turns by angle t / base^(2j/D).
    pairs = torch.complex(x[..., : D // 2], x[..., D // 2 :])
    angles = torch.tensor([[t / base ** (2 * j / D) for j in range(D // 2)] for t in range(T)], dtype=torch.float64)
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    expected = torch.cat((rotated.real, rotated.imag), dim=-1)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_fused_equals_reference(device, dtype):
    x = torch.randn(2, 8, 32, device=device, dtype=dtype)
    w_gate, w_up = (torch.randn(48, 32, device=device, dtype=dtype) / 6 for _ in range(2))
    w_down = torch.randn(32, 48, device=device, dtype=dtype) / 7
    with kernels.use_backend("fused"):
        fast = values_and_grads(lambda x, *w: kernels.swiglu(x, *map(linear, w)), x, w_gate, w_up, w_down)
    reference = values_and_grads(kernels.swiglu_reference, x, w_gate, w_up, w_down)
    assert_same(fast, reference, **TOLERANCE[dtype])


def linear(weight: torch.Tensor) -> torch.nn.Linear:
    """An nn.Linear computing with ``weight`` (a tensor that gradients flow to), without a bias."""
    module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    del module.weight
    module.weight = weight
    return module


def test_swiglu_reference_is_silu_gated_linear_unit():
    x, w_gate, w_up, w_down = torch.randn(5, 4), torch.randn(6, 4), torch.randn(6, 4), torch.randn(4, 6)
    gate = x @ w_gate.T
    expected = ((gate * torch.sigmoid(gate)) * (x @ w_up.T)) @ w_down.T
    torch.testing.assert_close(kernels.swiglu_reference(x, w_gate, w_up, w_down), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_attention_fused_equals_reference(device, dtype, groups):
    q = torch.randn(2, 24, 8, 16, device=device, dtype=dtype)
    k, v = (torch.randn(2, 24, groups, 16, device=device, dtype=dtype) for _ in range(2))
    assert_same(*both_backends(kernels.attention, q, k, v), **TOLERANCE[dtype])


def test_attention_with_a_mask_equals_reference():
    q = torch.randn(1, 3, 4, 8)
    k, v = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
    mask = torch.arange(10)[None, :] <= torch.tensor([7, 8, 9])[:, None]
    assert_same(*both_backends(lambda q, k, v: kernels.attention(q, k, v, mask), q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_reference_is_causal_softmax_attention():
    q, k, v = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 1, 4), torch.randn(1, 5, 1, 4)
    out = kernels.attention_reference(q, k, v)
    for head in range(2):
        for t in range(5):
            weights = torch.softmax(torch.stack([q[0, t, head] @ k[0, s, 0] / 2 for s in range(t + 1)]), 0)
            expected = sum(w * v[0, s, 0] for s, w in enumerate(weights))
            torch.testing.assert_close(out[0, t, head], expected)


def test_cross_entropy_reference_is_mean_negative_log_likelihood():
    logits, targets = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 4, -100, 2, 2, -100])
    expected = -sum(torch.log_softmax(logits[i], 0)[targets[i]] for i in (0, 1, 3, 4)) / 4
    torch.testing.assert_close(kernels.cross_entropy_reference(logits, targets), expected.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [5, None])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("library", [False, True], ids=["ours", "pytorch-if-no-z-loss"])
def test_linear_cross_entropy_fused_equals_reference(monkeypatch, device, dtype, chunk_rows, z_loss, library):
    """Ours, and PyTorch's F.linear_cross_entropy where it is chosen (without the z-loss, which only ours
    computes), against the loss on full logits."""
    monkeypatch.setattr(kernels, "LIBRARY_LOSS", {(device, dtype)} if library else set())
    chosen = kernels.implementation("linear_cross_entropy", device, dtype, z_loss=z_loss > 0)
    assert (chosen == kernels.LIBRARY_LOSS_NAME) == (library and not z_loss)
    x = torch.randn(2, 13, 32, device=device, dtype=dtype)
    weight = (torch.randn(300, 32, device=device) / 4).to(dtype)
    targets = torch.randint(0, 300, (2, 13), device=device)
    targets[1, -3:] = -100

    def loss(x, weight):
        return kernels.linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows, z_loss=z_loss).loss.unsqueeze(0)

    (fast_out, fast_grads), (ref_out, ref_grads) = both_backends(loss, x, weight)
    assert [g.dtype for g in fast_grads] == [dtype, dtype]
    torch.testing.assert_close(fast_out, ref_out, **TOLERANCE[dtype])
    for fast, ref in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast.float(), ref.float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("chunk_rows", [4, 7, None])
def test_z_loss_equals_the_formula_on_full_logits(chunk_rows):
    """cross-entropy + coef x mean(logsumexp(logits)^2) over the targets, value and gradients, written out
    here with torch.logsumexp on the whole (N, V) logits."""
    coef = 0.05
    x = torch.randn(3, 9, 16, dtype=torch.float64).float()
    weight = torch.randn(200, 16) * 2  # logits large enough that logsumexp^2 matters
    targets = torch.randint(0, 200, (3, 9))
    targets[0, :4] = -100

    def formula(x, weight):
        logits = (x @ weight.T).reshape(-1, 200)
        keep = targets.reshape(-1) != -100
        z_term = torch.logsumexp(logits, dim=-1)[keep].pow(2).mean()
        nll = -logits.log_softmax(-1)[keep].gather(1, targets.reshape(-1)[keep, None]).mean()
        return (nll + coef * z_term).unsqueeze(0), z_term

    def chunked(x, weight):
        terms = kernels.linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows, z_loss=coef)
        return terms.loss.unsqueeze(0), terms.z_term

    (ours, ours_grads), (expected, expected_grads) = (
        values_and_grads(lambda *t: chunked(*t)[0], x, weight),
        values_and_grads(lambda *t: formula(*t)[0], x, weight),
    )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked(x, weight)[1], formula(x, weight)[1], atol=1e-5, rtol=1e-5)
    without = kernels.linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows).loss
    assert ours.item() - without.item() > 0.1  # the term is really added


def test_linear_cross_entropy_holds_no_logits():
    x = torch.randn(512, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = kernels.linear_cross_entropy(x, weight, torch.randint(0, 1000, (512,)), chunk_rows=64, z_loss=1e-4).loss
    assert max(t.numel() for t in saved) <= weight.numel()  # at most (V, d), never (N, V)
    loss.backward()
    with torch.no_grad():  # evaluation computes no gradients at all
        assert torch.isfinite(kernels.linear_cross_entropy(x, weight, torch.zeros(512, dtype=torch.long)).loss)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="Unknown kernel backend 'triton'"):
        kernels.set_backend("triton")


OURS = "chunked pytorch, gradients in the forward pass"
PYTORCH_PATHS = {
    "rms_norm": "torch.nn.functional.rms_norm",
    "apply_rotary": "pytorch",
    "swiglu": "pytorch",
    "attention": "scaled_dot_product_attention",
    "linear_cross_entropy": OURS,
}


def test_describe_names_the_cpu_paths():
    assert kernels.describe("cpu", torch.bfloat16) == PYTORCH_PATHS
    assert kernels.describe("cpu") == PYTORCH_PATHS | {"linear_cross_entropy": kernels.LIBRARY_LOSS_NAME}
    assert kernels.describe("cpu", z_loss=True) == PYTORCH_PATHS  # only ours computes the z-loss
    compiled = kernels.describe("cpu", compiled=True)
    assert compiled["apply_rotary"] == compiled["swiglu"] == "pytorch (fused by torch.compile)"
    with kernels.use_backend("reference"):
        assert set(kernels.describe("cpu").values()) == {"reference"}


@pytest.mark.parametrize("installed", [True, False])
@pytest.mark.parametrize("hopper", [True, False])
def test_describe_follows_the_extensions_that_import_and_the_card(monkeypatch, installed, hopper):
    monkeypatch.setattr(kernels, "_optional_module", lambda name: object() if installed else None)
    monkeypatch.setattr(kernels, "hopper_or_newer", lambda device: hopper and torch.device(device).type == "cuda")
    bf16, fp32 = kernels.describe("cuda", torch.bfloat16), kernels.describe("cuda", torch.float32)
    masked = kernels.implementation("attention", "cuda", torch.bfloat16, masked=True)
    if hopper:  # cuDNN attention first, whatever is installed
        assert bf16["attention"] == fp32["attention"] == masked == kernels.SDPA_CUDNN_FIRST
    elif installed:
        assert bf16["attention"] == "flash-attn 2"
        assert fp32["attention"] == masked == "scaled_dot_product_attention"  # FlashAttention-2: fp16/bf16, no mask
    else:
        assert bf16["attention"] == fp32["attention"] == "scaled_dot_product_attention"
    expected = {"rms_norm": "flash-attn triton", "apply_rotary": "flash-attn triton", "swiglu": "xformers"}
    for kernel in ("rms_norm", "apply_rotary", "swiglu"):
        assert bf16[kernel] == (expected[kernel] if installed else PYTORCH_PATHS[kernel])
    assert bf16["linear_cross_entropy"] == fp32["linear_cross_entropy"] == OURS  # not measured on GPUs yet
    assert kernels.describe("cpu", torch.bfloat16) == PYTORCH_PATHS  # extensions are for CUDA only


def test_without_pytorchs_chunked_loss_ours_runs(monkeypatch):
    monkeypatch.delattr(torch.nn.functional, "linear_cross_entropy")
    assert kernels.describe("cpu")["linear_cross_entropy"] == OURS
    x, weight, targets = torch.randn(6, 8), torch.randn(50, 8), torch.randint(0, 50, (6,))
    torch.testing.assert_close(
        kernels.linear_cross_entropy(x, weight, targets).loss, kernels.cross_entropy_reference(x @ weight.T, targets)
    )


def test_the_kernels_run_what_describe_names(monkeypatch):
    ran = []
    for name in ("scaled_dot_product_attention", "rms_norm", "linear_cross_entropy"):
        original = getattr(torch.nn.functional, name)
        monkeypatch.setattr(
            torch.nn.functional, name, lambda *a, _o=original, _n=name, **k: ran.append(_n) or _o(*a, **k)
        )
    q = torch.randn(1, 4, 2, 8)
    kernels.attention(q, q, q)
    kernels.rms_norm(q, torch.ones(8), 1e-5)
    kernels.linear_cross_entropy(q.reshape(-1, 8), torch.randn(20, 8), torch.randint(0, 20, (8,)))
    kernels.linear_cross_entropy(q.reshape(-1, 8), torch.randn(20, 8), torch.randint(0, 20, (8,)), z_loss=1e-4)
    described = kernels.describe("cpu")
    assert ran == ["scaled_dot_product_attention", "rms_norm", "linear_cross_entropy"]  # the z-loss: ours
    assert (described["attention"], described["rms_norm"], described["linear_cross_entropy"]) == (
        "scaled_dot_product_attention",
        "torch.nn.functional.rms_norm",
        kernels.LIBRARY_LOSS_NAME,
    )
