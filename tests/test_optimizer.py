"""The training optimizer: fused AdamW (one kernel for all parameters) against PyTorch's foreach AdamW."""

import torch

from lit_gpt import GPT, Config

from conftest import TINY_OVERRIDES


def test_fused_adamw_gives_the_parameters_of_foreach_adamw():
    config = Config.from_name("tiny_LLaMA_5M", **TINY_OVERRIDES)
    idx = torch.randint(0, config.vocab_size, (4, 33))
    trained = {}
    for kind in ("foreach", "fused"):
        torch.manual_seed(0)
        model = GPT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), **{kind: True})
        for _ in range(5):
            model(idx[:, :-1], targets=idx[:, 1:]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        trained[kind] = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.manual_seed(0)
    start = GPT(config).state_dict()
    for name, parameter in trained["fused"].items():
        torch.testing.assert_close(parameter, trained["foreach"][name], atol=1e-6, rtol=1e-6, msg=name)
        assert not torch.equal(parameter, start[name]), name  # the steps did move every weight
