"""The shared optimiser pieces: warm-up + cosine factor and AdamW weight-decay groups."""
import pytest
import torch
from torch import nn

from xlstm_core.optim import warmup_cosine, weight_decay_groups


def test_warmup_cosine_endpoints_and_shape():
    factors = [warmup_cosine(s, 100, 10, 0.1) for s in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.55)  # cosine midpoint
    assert factors[100] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)  # held at the floor
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_weight_decay_groups_split_matrices_from_the_rest():
    model = nn.ModuleDict({"embed": nn.Embedding(5, 4), "proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4),
                           "frozen": nn.Linear(4, 2)})
    model["frozen"].requires_grad_(False)
    decay, no_decay = weight_decay_groups(model, 0.1, skip=("embed",))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]  # proj.weight only
    assert {id(p) for p in no_decay["params"]} == {id(model["embed"].weight), id(model["proj"].bias),
                                                   id(model["norm"].weight), id(model["norm"].bias)}
    decay_all, _ = weight_decay_groups(model, 0.1)
    assert len(decay_all["params"]) == 2  # the embedding decays without the skip
