"""--document_mask: attention that stays inside each document of a packed block, and its kernels."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from lit_gpt import GPT, Config, kernels
from lit_gpt.tokenizer import Boundary

from conftest import requires_cuda

BOS = 1
BOUNDARY = Boundary("<s>", BOS, "before")
CONFIG = Config(n_layer=2, n_head=4, n_embd=64, n_query_groups=2, intermediate_size=128, vocab_size=200, block_size=64)


def packed_block() -> tuple[torch.Tensor, list[slice]]:
    """One block of 40 tokens: the end of a document begun in an earlier block (no BOS), then two
    documents, each starting with BOS; and the three segments' spans."""
    tokens = torch.randint(2, CONFIG.vocab_size, (1, 40))
    tokens[0, 9] = tokens[0, 25] = BOS
    return tokens, [slice(0, 9), slice(9, 25), slice(25, 40)]


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[0].double(), targets[0], reduction="none")


@pytest.mark.parametrize("restart_positions", [False, True], ids=["block-positions", "restarted-positions"])
def test_each_document_of_a_masked_block_is_scored_as_if_it_were_alone(restart_positions):
    """Alone at its positions in the block, or at positions 0, 1, ...: RoPE sees distances only, so the
    masked block needs no restarted positions."""
    model = GPT(CONFIG).eval()
    block, spans = packed_block()
    inputs, targets = block[:, :-1], block[:, 1:]
    with torch.no_grad():
        masked = token_losses(model(inputs, boundary=BOUNDARY), targets)
        plain = token_losses(model(inputs), targets)
        for span in spans:
            span = slice(span.start, min(span.stop, inputs.shape[1]))
            positions = (
                torch.arange(span.stop - span.start) if restart_positions else torch.arange(span.start, span.stop)
            )
            alone = token_losses(model(inputs[:, span], input_pos=positions), targets[:, span])
            torch.testing.assert_close(masked[span], alone, atol=1e-5, rtol=0)
            if span.start > 0:  # the later documents see the earlier ones without the mask
                assert (plain[span] - alone).abs().max() > 1e-3


def explicit_document_attention(q, k, v, mask=None):
    """SDPA under the block-diagonal causal mask written out from the BOS positions of ``explicit_block``."""
    T = q.shape[1]
    allowed = torch.zeros(T, T, dtype=torch.bool)
    starts = [0, *[i for i in range(T) if explicit_block[0, i] == BOS], T]
    for start, stop in itertools.pairwise(starts):
        for query in range(start, stop):
            allowed[query, start : query + 1] = True
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed, enable_gqa=True
    )
    return y.transpose(1, 2)


explicit_block, _ = packed_block()


def test_masked_gradients_equal_those_of_sdpa_under_the_explicit_block_diagonal_mask(monkeypatch):
    model = GPT(CONFIG)
    inputs, targets = explicit_block[:, :-1], explicit_block[:, 1:]

    def gradients(**options) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(inputs, targets=targets, **options).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    masked = gradients(boundary=BOUNDARY)
    plain = gradients()
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "attention", explicit_document_attention)
        reference = gradients()
    for name in masked:
        torch.testing.assert_close(masked[name], reference[name], atol=1e-5, rtol=1e-5, msg=name)
    assert max((masked[n] - plain[n]).abs().max() for n in masked) > 1e-3  # the mask matters


def test_a_block_without_bos_is_one_segment():
    model = GPT(CONFIG).eval()
    block = torch.randint(2, CONFIG.vocab_size, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(model(block, boundary=BOUNDARY), model(block), atol=1e-5, rtol=0)


def test_document_ids_count_from_each_bos():
    block = torch.tensor([[5, 6, BOS, 7, 8, 9, BOS, 4], [BOS, 3, 3, BOS, BOS, 2, 2, 2]])
    documents = kernels.document_ids(block, BOUNDARY)
    assert documents.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2], [1, 1, 1, 2, 3, 3, 3, 3]]
    dense = kernels.dense_document_mask(documents)
    assert dense.shape == (2, 1, 8, 8)
    assert dense[0, 0, 3].tolist() == [False, False, True, True, False, False, False, False]


def test_document_ids_with_eos_after_each_document_keep_the_eos_in_the_document_it_ends():
    eos = 2
    block = torch.tensor([[5, 6, eos, 7, 8, 9, eos, 4], [eos, 3, 3, eos, eos, 2 + 3, 4, 4]])
    documents = kernels.document_ids(block, Boundary("<|endoftext|>", eos, "after"))
    assert documents.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 1, 2, 3, 3, 3]]


def test_each_document_ending_with_eos_is_scored_as_if_it_were_alone():
    """GPT-2/SmolLM-style packing (text, EOS, text, EOS): with the mask, each document's per-token losses --
    its EOS predicting the next document's first token included -- equal the document's own alone."""
    eos = 3
    model = GPT(CONFIG).eval()
    block = torch.randint(4, CONFIG.vocab_size, (1, 40))
    block[0, 8] = block[0, 24] = eos  # a document begun earlier ends at 8; the next ends at 24
    inputs, targets = block[:, :-1], block[:, 1:]
    with torch.no_grad():
        masked = token_losses(model(inputs, boundary=Boundary("<|endoftext|>", eos, "after")), targets)
        plain = token_losses(model(inputs), targets)
        for span in (slice(0, 9), slice(9, 25), slice(25, 39)):
            alone = token_losses(model(inputs[:, span]), targets[:, span])
            torch.testing.assert_close(masked[span], alone, atol=1e-5, rtol=0)
            if span.start > 0:
                assert (plain[span] - alone).abs().max() > 1e-3


def test_the_block_mask_for_gpus_attends_like_the_dense_one():
    """FlexAttention's block mask (the CUDA path) against the dense one; forward only: PyTorch has no
    FlexAttention backward on CPUs (the CUDA test below checks gradients)."""
    documents = kernels.document_ids(torch.tensor([[7] * 50 + [BOS] + [7] * 99, [BOS] + [7] * 149]), BOUNDARY)
    q, k, v = torch.randn(2, 150, 4, 16), torch.randn(2, 150, 2, 16), torch.randn(2, 150, 2, 16)
    flex = kernels.attention(q, k, v, kernels.block_document_mask(documents))
    dense = kernels.attention(q, k, v, kernels.dense_document_mask(documents))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


@requires_cuda
def test_flex_attention_on_cuda_gives_the_dense_masks_values_and_gradients():
    block = torch.randint(2, 100, (2, 512), device="cuda")
    block[0, [100, 300]] = BOS
    documents = kernels.document_ids(block, BOUNDARY)
    assert kernels.implementation("attention", "cuda", documents=True) == kernels.FLEX_DOCUMENTS
    inputs = [torch.randn(2, 512, h, 64, device="cuda", requires_grad=True) for h in (8, 2, 2)]
    results = []
    for mask in (kernels.document_mask(documents), kernels.dense_document_mask(documents)):
        out = kernels.attention(*inputs, mask)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        results.append((out, grads))
    torch.testing.assert_close(results[0], results[1], atol=2e-4, rtol=2e-4)


def test_the_kernel_choice_follows_the_device_and_is_described():
    assert kernels.implementation("attention", "cpu", documents=True) == kernels.SDPA_DOCUMENTS
    assert kernels.implementation("attention", "cuda", documents=True) == kernels.FLEX_DOCUMENTS
    assert kernels.describe("cpu", document_mask=True)["attention"] == kernels.SDPA_DOCUMENTS
    assert kernels.describe("cpu")["attention"] == "scaled_dot_product_attention"
    with kernels.use_backend("reference"):
        assert isinstance(kernels.document_mask(torch.zeros(1, 4, dtype=torch.long)), torch.Tensor)


def test_decoding_with_the_mask_is_refused():
    model = GPT(CONFIG)
    block = torch.randint(2, CONFIG.vocab_size, (1, 8))
    model.set_kv_cache(1)
    with pytest.raises(ValueError, match="Document masks are for training"):
        model(block, input_pos=torch.arange(8), boundary=BOUNDARY)
