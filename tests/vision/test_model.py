"""ViL backbone: published parameter counts, shapes, reading directions, pooling, timm integration, checkpoints."""
import pytest
import timm
import torch
import torch.nn.functional as F

import vision
from vision.vil import VisionLSTM, load_checkpoint

SMALL = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, chunk_size=16)


def small_vil(**overrides):
    torch.manual_seed(0)
    return timm.create_model("vil_tiny_patch16_224", num_classes=5, **{**SMALL, **overrides}).eval()


@pytest.mark.parametrize("name, expected", [("vil_tiny_patch16_224", 6_381_544), ("vil_small_patch16_224", 23_378_728),
                                            ("vil_base_patch16_224", 89_223_592)])
def test_parameter_counts_match_the_published_models(name, expected):
    with torch.device("meta"):
        model = timm.create_model(name, img_size=192)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len(model.stack.blocks) == 24 and model.stack.reversed == [i % 2 == 1 for i in range(24)]


@pytest.mark.parametrize("img", [(16, 16), (32, 24), (8, 40)])
def test_shapes_at_several_resolutions(img):
    model = small_vil()
    x = torch.randn(2, 3, *img)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, img[0] // 4 * img[1] // 4, 16)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
    assert model(x).shape == (2, 5)


def _block_outputs(model, index, x, grid):
    with torch.no_grad():
        return model._block(index, x, grid)


def test_forward_block_is_causal_and_reversed_block_anti_causal():
    """Block 0 reads top-left -> bottom-right, block 1 the flipped sequence: perturbing the last token can only
    reach earlier tokens through block 1, perturbing the first token later ones only through block 0 (the 3x3 conv
    reaches one row + one token, hence the margin)."""
    model = small_vil(img_size=32)  # 8x8 grid, 64 tokens
    grid, T, margin = (8, 8), 64, 8 + 1
    x = torch.randn(1, T, 16)
    for index, changed_token in ((0, T - 1), (1, 0)):
        y = _block_outputs(model, index, x, grid)
        x2 = x.clone()
        x2[:, changed_token] += 1.0
        diff = (_block_outputs(model, index, x2, grid) - y).abs().amax(-1)[0]
        if index == 0:  # forward: tokens well before the change cannot see it
            assert diff[: T - 1 - margin].max() == 0 and diff[T - 1] > 0
        else:  # reversed: tokens well after the change cannot see it
            assert diff[1 + margin:].max() == 0 and diff[0] > 0
    # and each direction does see the other end: the change propagates against the "blind" direction
    x2 = x.clone()
    x2[:, T - 1] += 1.0
    assert (_block_outputs(model, 1, x2, grid) - _block_outputs(model, 1, x, grid))[0, 0].abs().max() > 0


def test_bilateral_pooling_uses_first_and_last_token_only():
    model = small_vil()
    tokens = torch.randn(2, 16, 16)
    pooled = model.forward_head(tokens, pre_logits=True)
    expected = F.layer_norm(torch.cat([tokens[:, 0], tokens[:, -1]], -1), (32,), model.head_norm.weight,
                            model.head_norm.bias, model.head_norm.eps)
    torch.testing.assert_close(pooled, expected)
    tokens[:, 1:-1] = torch.randn(2, 14, 16)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), expected)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dense_qkv_path_matches_block_diagonal_einsum(backend):
    """The fused path (dense q/k/v weights with the gate weights folded in) computes the literal layer: same
    outputs and same gradients, with every parameter random (the gates' weights start at zero). On the Triton
    backend the cell runs on the two GEMMs' packed outputs (kernels.mlstm_packed), whose backward writes their
    gradients, gate columns included, itself."""
    dense, blocks = small_vil(dense_qkv=True, backend=backend), small_vil(dense_qkv=False)
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    blocks.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 16, 16)
    out_dense, out_blocks = dense(x), blocks(x)
    torch.testing.assert_close(out_dense, out_blocks, atol=1e-5, rtol=1e-5)
    out_dense.square().sum().backward()
    out_blocks.square().sum().backward()
    for (name, p), q in zip(dense.named_parameters(), blocks.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("grad", [True, False])
def test_dense_qkv_views_have_vector_aligned_token_strides(grad):
    """q, k, v are views into the two folded GEMMs' outputs; their token strides must be multiples of 16 elements,
    or Triton cannot vectorise the cell's loads (unpadded, this layer's widths are 2 * 32 + 8 and 32 + 8)."""
    layer = small_vil().stack.blocks[0].layer
    x_conv, x_inner = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    with torch.set_grad_enabled(grad):
        q, k, v, igate, fgate = layer._projections(x_conv, x_inner)
    assert [t.shape for t in (q, k, v)] == [(2, 16, 32)] * 3 and igate.shape == fgate.shape == (2, 16, 4)
    assert all(t.stride(1) % 16 == 0 and t.stride(-1) == 1 for t in (q, k, v)), [t.stride() for t in (q, k, v)]


def test_token_stream_is_token_major():
    """The residual stream leaves the patch embedding as dense (B, N, E) tokens and every block keeps it so; as a
    channel-major view of the conv's output it stayed channel-major through all blocks (pointwise ops keep their
    input's layout), and each layer norm read it with a stride of N tokens."""
    model = small_vil()
    x, grid = model._embed(torch.randn(2, 3, 16, 16))
    assert x.is_contiguous(), x.stride()
    for index in range(len(model.stack.blocks)):
        x = _block_outputs(model, index, x, grid)
        assert x.is_contiguous(), (index, x.stride())


def test_inference_reuses_folded_weights_until_a_parameter_changes(monkeypatch):
    """Without autograd the folded q/k/v + gate weights are computed once per layer and reused; an optimizer step
    (in-place), a state-dict load and a dtype move each give fresh ones, and outputs always match the unfolded
    layer's. With autograd the stack folds all layers in one call. `calls` holds one entry per layer folded."""
    from xlstm_core import mlstm_layer, stack

    calls = []
    original = mlstm_layer.fold_weights

    def counted(layers):
        calls.extend([1] * len(layers))
        return original(layers)

    monkeypatch.setattr(mlstm_layer, "fold_weights", counted)
    monkeypatch.setattr(stack, "fold_weights", counted)
    model, blocks = small_vil(depth=2), small_vil(depth=2, dense_qkv=False)
    x = torch.randn(2, 3, 16, 16)

    def agrees() -> bool:
        blocks.load_state_dict(model.state_dict())
        with torch.no_grad():
            return torch.allclose(model(x), blocks(x), atol=1e-5, rtol=1e-5)

    with torch.inference_mode():
        model(x)
        model(x)
    assert len(calls) == 2  # two layers, folded once each
    assert agrees() and len(calls) == 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).square().sum().backward()  # with autograd: folded afresh, not cached
    optimizer.step()
    assert len(calls) == 4 and agrees() and len(calls) == 6
    model.load_state_dict({k: v + 0.1 for k, v in model.state_dict().items()})
    assert agrees() and len(calls) == 8
    model.double()
    with torch.no_grad():
        assert model(x.double()).dtype == torch.float64 and len(calls) == 10


def test_block_diagonal_matches_torch_block_diag():
    """One block-diagonal matrix from (n, d, e) blocks, and k of them side by side from (n, d, k, e); with a batch
    dim, one per batch entry."""
    from xlstm_core.linear import block_diagonal

    w = torch.randn(5, 3, 2, 4)
    torch.testing.assert_close(block_diagonal(w[:, :, 0]), torch.block_diag(*w[:, :, 0]), rtol=0, atol=0)
    side_by_side = torch.cat([torch.block_diag(*w[:, :, j]) for j in range(2)], dim=1)
    torch.testing.assert_close(block_diagonal(w), side_by_side, rtol=0, atol=0)
    batch = torch.stack([w, 2 * w])
    torch.testing.assert_close(block_diagonal(batch, batch_dims=1), torch.stack([side_by_side, 2 * side_by_side]),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(n, d, e\)"):
        block_diagonal(torch.randn(4, 4))


def test_parallel_form_matches_chunkwise():
    chunkwise, parallel = small_vil(), small_vil(mlstm_form="parallel")
    parallel.load_state_dict(chunkwise.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(parallel.forward_features(x), chunkwise.forward_features(x), atol=1e-5, rtol=1e-5)


def test_auto_form_is_parallel_under_torch_compile_or_on_triton(monkeypatch):
    from xlstm_core import cell_gate_triton, mlstm_layer

    forms, original, original_packed = [], mlstm_layer.mlstm, mlstm_layer.mlstm_packed
    original_cell_gate = cell_gate_triton.mlstm_packed_norm_gate

    def recording_mlstm(*args, form, **kwargs):
        forms.append(form)
        return original(*args, form=form, **kwargs)

    def recording_packed(*args, **kwargs):  # the parallel form on the packed projections
        forms.append("parallel")
        return original_packed(*args, **kwargs)

    def recording_cell_gate(*args, **kwargs):  # the parallel form with the norm-gate chain fused (inference)
        forms.append("parallel, fused with the norm-gate")
        return original_cell_gate(*args, **kwargs)

    def record():
        monkeypatch.setattr(mlstm_layer, "mlstm", recording_mlstm)
        monkeypatch.setattr(mlstm_layer, "mlstm_packed", recording_packed)
        monkeypatch.setattr(cell_gate_triton, "mlstm_packed_norm_gate", recording_cell_gate)

    record()
    model = small_vil(depth=1)
    x = torch.randn(1, 3, 16, 16)
    eager = model(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # what dynamo reports while it traces
    compiled = model(x)
    assert forms == ["chunkwise", "parallel"]
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    monkeypatch.undo()
    record()
    fused = small_vil(depth=1, backend="triton")  # the fused Triton kernel, eagerly (interpreter on CPU)
    fused.load_state_dict(model.state_dict())
    with torch.no_grad():  # with a gradient the cell runs inside the fused mixer op (test_fused_mixer_*)
        torch.testing.assert_close(fused(x), eager, atol=1e-5, rtol=1e-4)
    assert forms[2:] == ["parallel, fused with the norm-gate"]
    with pytest.raises(ValueError, match="mlstm_form"):
        small_vil(mlstm_form="recurrent")


def test_causal1d_conv_variant_runs():
    model = small_vil(conv_mode="causal1d")
    assert model.stack.blocks[0].layer.conv.weight.shape == (32, 4)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_timm_registry_and_data_config():
    assert {"vil_tiny_patch16_224", "vil_small_patch16_224", "vil_base_patch16_224"} <= set(timm.list_models("vil_*"))
    model = small_vil()
    assert isinstance(model, VisionLSTM)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["interpolation"] == "bicubic" and config["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert model.pretrained_cfg["num_classes"] == 1000 and model.pretrained_cfg["classifier"] == "head"
    assert model.no_weight_decay() == {"pos_embed"}
    model.reset_classifier(3, global_pool="avg")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3) and model.head.in_features == 16


def test_checkpoint_round_trip_with_new_resolution_and_classes(tmp_path):
    model = small_vil()
    path = tmp_path / "vil.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)  # a training checkpoint of ours
    same = timm.create_model("vil_tiny_patch16_224", num_classes=5, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    x = torch.randn(2, 3, 16, 16)
    # timm drops the classifier when num_classes differs from the pretrained_cfg's 1000: compare the backbone
    torch.testing.assert_close(same.forward_head(same.forward_features(x), pre_logits=True),
                               model.forward_head(model.forward_features(x), pre_logits=True))
    bigger = timm.create_model("vil_tiny_patch16_224", num_classes=7, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **{**SMALL, "img_size": 32}).eval()
    assert bigger.pos_embed.shape == (1, 64, 16)
    torch.testing.assert_close(bigger.stack.blocks[1].layer.q.weight, model.stack.blocks[1].layer.q.weight)
    # the resampled grid agrees with resampling on the fly inside the original model
    torch.testing.assert_close(bigger.forward_features(torch.ones(1, 3, 32, 32)),
                               model.forward_features(torch.ones(1, 3, 32, 32)), atol=1e-5, rtol=1e-4)


def _to_published_layout(model):
    """Our state dict in the published VisionLSTM2 key layout (written independently of vision.vil's mapping)."""
    sd, out = model.state_dict(), {}
    grid = model.patch_embed.grid_size
    out["patch_embed.proj.weight"], out["patch_embed.proj.bias"] = sd["patch_embed.proj.weight"], sd[
        "patch_embed.proj.bias"]
    out["pos_embed.embed"] = sd["pos_embed"].reshape(1, grid[0], grid[1], -1)
    for i in range(len(model.stack.blocks)):
        p = f"blocks.{i // 2}.{'rowwise_from_bot_right' if i % 2 else 'rowwise_from_top_left'}."
        b = f"stack.blocks.{i}."
        out[p + "norm.weight"] = sd[b + "norm.weight"] - 1
        out[p + "norm.bias"] = sd[b + "norm.bias"]
        for theirs, ours in (("proj_up", "proj_up"), ("proj_down", "proj_down"), ("mlstm_cell.igate", "igate"),
                             ("mlstm_cell.fgate", "fgate")):
            out[p + f"layer.{theirs}.weight"] = sd[b + f"layer.{ours}.weight"]
            out[p + f"layer.{theirs}.bias"] = sd[b + f"layer.{ours}.bias"]
        for n in "qkv":
            out[p + f"layer.{n}_proj.weight"] = sd[b + f"layer.{n}.weight"].transpose(1, 2)
            out[p + f"layer.{n}_proj.bias"] = sd[b + f"layer.{n}.bias"]
        out[p + "layer.conv.weight"] = sd[b + "layer.conv.conv.weight"]
        out[p + "layer.conv.bias"] = sd[b + "layer.conv.conv.bias"]
        out[p + "layer.mlstm_cell.outnorm.weight"] = sd[b + "layer.norm.weight"] - 1
        out[p + "layer.mlstm_cell.outnorm.bias"] = sd[b + "layer.norm_bias"]
        out[p + "layer.learnable_skip"] = sd[b + "layer.skip"]
    out["norm.weight"], out["norm.bias"] = sd["stack.final_norm.weight"] - 1, sd["stack.final_norm.bias"]
    out["legacy_norm.weight"], out["legacy_norm.bias"] = sd["head_norm.weight"], sd["head_norm.bias"]
    out["head.weight"], out["head.bias"] = sd["head.weight"], sd["head.bias"]
    return out


def test_published_checkpoint_layout_loads_from_a_local_file(tmp_path):
    source = small_vil()
    with torch.no_grad():  # make every parameter distinctive (norm biases, skip, head are constant at init)
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "vil2-tiny.th"
    torch.save({"state_dict": _to_published_layout(source)}, path)
    target = small_vil()
    load_checkpoint(target, str(path))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ValueError, match="unexpected key"):
        vision.convert_published({"blocks.0.rowwise_from_top_left.layer.bogus": torch.zeros(1)})


def test_forward_intermediates_and_features_only():
    model = small_vil(depth=4)
    x = torch.randn(2, 3, 16, 16)
    final, inter = model.forward_intermediates(x, indices=[1, 3])
    assert [t.shape for t in inter] == [(2, 16, 4, 4)] * 2
    torch.testing.assert_close(final, model.forward_features(x))
    last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(last[0], model.forward_features(x))
    features = timm.create_model("vil_tiny_patch16_224", features_only=True, out_indices=(0, 2), **{**SMALL,
                                                                                                   "depth": 4})
    assert [f.shape for f in features(x)] == [(2, 16, 4, 4)] * 2
    assert features.feature_info.reduction() == [4, 4]


def test_grad_checkpointing_matches_plain_forward():
    model = small_vil().train()
    x = torch.randn(2, 3, 16, 16)
    plain = model(x)
    model.set_grad_checkpointing(True)
    ckpt = model(x)
    torch.testing.assert_close(ckpt, plain)
    ckpt.sum().backward()
    assert model.pos_embed.grad is not None


def test_input_validation():
    with pytest.raises(ValueError, match="global_pool"):
        VisionLSTM(global_pool="max")
    with pytest.raises(ValueError, match="depth"):
        VisionLSTM(depth=0)


def test_compiled_training_saves_the_cell_output_token_major():
    """Inductor's layout optimisation (on for graphs with convolutions) may store a 4-D tensor saved for the backward
    channels-last; for the cell's output h (B, T, NH, DH) that was a copy with the token dim fastest, written with
    a stride of T elements (ViL-T on an H100: ~2.5 ms per training step). The fused cell ops return h 3-D, so no
    saved tensor has the token dim fastest. Inductor on CPU with bf16 autocast and the layout optimisation forced
    on (its heuristics are size-dependent), the Triton kernels under the interpreter."""
    from torch._inductor import config

    model = small_vil(embed_dim=64, backend="triton").train()
    compiled = torch.compile(model)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(2, 3, 16, 16)
    with config.patch(force_layout_optimization=True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(x).float().square().sum()
        loss.backward()
    token_fastest = [(tuple(t.shape), t.stride()) for t in saved
                     if t.dim() == 4 and t.shape[1] == 16 and t.stride(1) == 1 and t.shape[-1] > 1]
    assert saved
    assert not token_fastest, token_fastest


def test_compiled_vil_tiny_layer_needs_no_inductor_padding():
    """Inductor pads the row stride of buffers wider than 1,024 elements to 128 bytes (comprehensive padding, on for
    GPUs). ViL-T's packed up-projection ([x_inner | z | v | gate shares], 1,168 columns unpadded) then went to a padded
    buffer and was copied back to the exact strides of the custom ops (~0.2 ms per block on an H100); its width is a
    multiple of 64 columns now, so no buffer of the compiled layer gets padded, in training or inference. On CPU
    with the padding forced on, ViL-T's widths, 16 tokens."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config, metrics

    from xlstm_core.mlstm_layer import mLSTMPreUpLayer

    layer = mLSTMPreUpLayer(VisionLSTM(embed_dim=192, depth=1, backend="triton").stack.cfg)
    x = torch.randn(1, 16, 192, requires_grad=True)
    metrics.reset()
    with config.patch(comprehensive_padding=True, disable_padding_cpu=False, fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):  # a cached graph would not count its paddings
        compiled = torch.compile(lambda x: layer(x, grid=(4, 4)), fullgraph=True)
        compiled(x).sum().backward()
        with torch.no_grad():  # inference takes the up-projection as one GEMM
            compiled(x)
    assert metrics.num_comprehensive_padding == 0


@pytest.mark.parametrize("bias", [True, False])
def test_stack_folds_its_layers_weights_at_once(bias, monkeypatch):
    """With autograd the block stack folds the q/k/v + gate (+ up-projection) weights of all its pre-up layers in one
    batched call; each layer's share equals its own fold, and the stack computes what the literal block-diagonal
    layers compute, outputs and parameter gradients (the up-projection's bias among them, which the packed path
    forms in the weight-gradient GEMM), with and without biases."""
    import dataclasses

    from xlstm_core import stack as stack_module
    from xlstm_core.config import xLSTMBlockStackConfig
    from xlstm_core.mlstm_layer import fold_weights
    from xlstm_core.stack import xLSTMBlockStack

    cfg = xLSTMBlockStackConfig(embedding_dim=16, num_heads=2, num_blocks=3, conv_mode="grid2d", conv_kernel_size=3,
                                bias=bias, dense_qkv=True, mlstm_form="parallel", reverse_at=(1,))
    torch.manual_seed(0)
    dense, literal = xLSTMBlockStack(cfg), xLSTMBlockStack(dataclasses.replace(cfg, dense_qkv=False))
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    literal.load_state_dict(dense.state_dict())
    layers = [block.layer for block in dense.blocks]
    for layer, together in zip(layers, fold_weights(layers)):
        for a, b in zip(together, fold_weights([layer])[0]):
            assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    calls = []
    monkeypatch.setattr(stack_module, "fold_weights", lambda ls: calls.append(len(ls)) or fold_weights(ls))
    x = torch.randn(2, 9, 16)
    y = dense(x, grid=(3, 3))
    assert calls == [3]
    y_literal = literal(x, grid=(3, 3))
    torch.testing.assert_close(y, y_literal, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), list(m.parameters())) for out, m in ((y, dense),
                                                                                        (y_literal, literal))]
    for (name, _), a, b in zip(dense.named_parameters(), *grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_compiled_vil_matches_eager_outputs_and_gradients():
    """Traced by torch.compile the model takes paths eager calls do not (the stack's batched weight fold and the
    norm-gate's traced forward with the fused backward): same logits and parameter gradients as eager. Inductor on
    CPU, the Triton kernels under the interpreter."""
    model = small_vil(embed_dim=32, backend="triton").train()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, 16, 16)
    results = []
    for run in (model, torch.compile(model)):
        y = run(x)
        results.append((y, torch.autograd.grad(y.square().sum(), list(model.parameters()))))
    (y_eager, g_eager), (y_compiled, g_compiled) = results
    torch.testing.assert_close(y_compiled, y_eager, atol=1e-5, rtol=1e-4)
    for (name, _), a, b in zip(model.named_parameters(), g_compiled, g_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
