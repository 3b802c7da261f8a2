"""CUDA-graph decoding equals eager decoding and the full forward's argmax (GPU only)."""
import pytest
import torch

from xlstm_core import generate, xLSTMLM, xLSTMLMConfig
from xlstm_core.cuda_graph import GraphedDecoder, graph_safe_sample


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_graphed_greedy_equals_eager_and_full_forward(backend):
    torch.manual_seed(0)
    cfg = xLSTMLMConfig.preset("tiny", stack={"embedding_dim": 128, "num_heads": 2, "num_blocks": 3,
                                              "slstm_at": [1], "backend": backend})
    model = xLSTMLM(cfg).cuda().eval()
    prompt = torch.randint(0, 256, (3, 37), device="cuda")
    decoder = GraphedDecoder(model, temperature=0)
    graphed = decoder.generate(prompt, 24)
    eager = generate(model, prompt, 24, temperature=0)
    assert torch.equal(graphed, eager)
    logits = model(torch.cat([prompt, graphed], 1))
    assert torch.equal(logits[:, 36:-1].argmax(-1), graphed)
    # the captured graph is reused for a new prompt of the same batch size
    prompt2 = torch.randint(0, 256, (3, 20), device="cuda")
    assert torch.equal(decoder.generate(prompt2, 10), generate(model, prompt2, 10, temperature=0))


@pytest.mark.gpu
def test_graph_safe_sampling_respects_top_k():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]], device="cuda").repeat(500, 1)
    picks = graph_safe_sample(logits, 1.0, 2, None)
    assert set(picks.tolist()) == {2, 3}
    # Gumbel-max frequencies follow the softmax over the kept tokens: p(3) = e/(1+e) = 0.73
    assert abs((picks == 3).float().mean().item() - 0.731) < 0.07


def test_graph_safe_sampling_on_cpu_matches_filters():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(300, 1)
    assert set(graph_safe_sample(logits, 1.0, None, 0.6).tolist()) == {3}
    assert torch.equal(graph_safe_sample(logits, 0.0, None, None), torch.full((300,), 3))
    assert set(graph_safe_sample(logits, 1.0, 3, None).tolist()) == {1, 2, 3}
