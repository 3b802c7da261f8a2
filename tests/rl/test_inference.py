"""CUDA-graph step equals eager steps (GPU); the latency benchmark's timing path runs on CPU."""
import importlib.util
from pathlib import Path

import pytest
import torch

from rl.model import ActionModel, ActionModelConfig

SMALL = {"embedding_dim": 32, "num_blocks": 2, "num_heads": 2,
         "max_obs_dim": 16, "max_action_dims": 4, "dropout": 0.0}


def _bench():
    path = Path(__file__).parents[2] / "benchmarks" / "lram_latency.py"
    spec = importlib.util.spec_from_file_location("lram_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backbone", ["lram", "dt"])
def test_benchmark_case_runs_on_cpu(backbone):
    bench = _bench()
    model = ActionModel(ActionModelConfig(backbone=backbone, **SMALL)).eval()
    result = bench.time_case(model, context=32, batch=2, device=torch.device("cpu"), dtype=torch.float32, iters=2,
                             graph=False)
    assert result["latency_ms"] > 0 and result["state_mib"] > 0
    if backbone == "dt":  # the KV cache holds every step of history: 2 (k, v) x layers x B x (L + 1) x E floats
        layers = len(model.backbone.blocks)
        assert result["state_mib"] == pytest.approx(2 * layers * 2 * 33 * 32 * 4 / 2**20 + 8 / 2**20)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("backbone", ["lram", "dt"])
def test_cuda_graph_step_equals_eager(backbone, compile):
    from rl.inference import GraphedStep
    from xlstm_core import map_state

    bench = _bench()
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = ActionModel(ActionModelConfig(backbone=backbone, **SMALL)).to(device).eval()
    inputs = [bench.step_inputs(model, 3, device, torch.float32) for _ in range(5)]
    eager_state = bench.make_state(model, inputs[0], 16, device, torch.float32)
    if backbone == "lram":  # same starting point for both
        graph_state = map_state(eager_state, torch.clone)
    else:
        graph_state = bench.make_state(model, inputs[0], 16, device, torch.float32)
        graph_state.k.copy_(eager_state.k)
        graph_state.v.copy_(eager_state.v)
    step = GraphedStep(model, inputs[0], graph_state, compile=compile)
    with torch.no_grad():
        for x in inputs:
            eager, eager_state = model.step(x, eager_state)
            tol = 1e-3 if compile else 1e-4  # compiled kernels may sum in another order
            torch.testing.assert_close(step(x), eager, atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_graphed_fused_post_up_step_equals_unfused_eager(batch, compile):
    """bf16 LRAM of xLSTM-7B blocks: the graphed step (fused decode kernels) against eager steps of the same model
    through the unfused PyTorch path."""
    import copy

    from rl.inference import GraphedStep
    from xlstm_core.config import XLSTM7B_STYLE
    from xlstm_core.fused_decode import fused_step_applies

    bench = _bench()
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg = ActionModelConfig(backbone="lram", **{**SMALL, "embedding_dim": 64, "num_heads": 4},
                            stack_overrides={**XLSTM7B_STYLE, "ffn_multiple_of": 16})
    model = ActionModel(cfg).to(device, torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.backbone.parameters():  # move off the init (zero gate weights, unit norm scales)
            p.add_(0.05 * torch.randn_like(p))
    unfused = copy.deepcopy(model)
    unfused.backbone.cfg.backend = "torch"
    inputs = [bench.step_inputs(model, batch, device, torch.bfloat16) for _ in range(5)]
    with torch.no_grad():
        token = torch.zeros(batch, 1, 64, device=device, dtype=torch.bfloat16)
        assert fused_step_applies(model.backbone.blocks[0], token, True)
        assert not fused_step_applies(unfused.backbone.blocks[0], token, True)
        _, state = model.step(inputs[0], None)
        _, ref_state = unfused.step(inputs[0], None)
    step = GraphedStep(model, inputs[0], state, compile=compile)
    with torch.no_grad():
        for x in inputs:
            expected, ref_state = unfused.step(x, ref_state)
            got = step(x)
            valid = torch.isfinite(expected)
            assert torch.equal(valid, torch.isfinite(got))
            err = (got[valid].double() - expected[valid].double()).norm() / expected[valid].double().norm()
            assert err < 3e-2, f"relative error {err:.3e}"
