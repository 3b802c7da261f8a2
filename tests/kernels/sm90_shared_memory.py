"""Shared memory of the chunkwise mLSTM kernels' pinned tile configs, compiled ahead of time for sm_90 (an H100) on
the CPU with Triton's own compiler and ptxas: no GPU needed. The Triton interpreter replaces kernels by Python
functions, so this runs as its own process (`python -m tests.kernels.sm90_shared_memory` prints {case: bytes} as
JSON); tests/kernels/test_mlstm_shared_memory.py checks the numbers.
"""
from __future__ import annotations

import json

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.mlstm import chunk_states_triton as states
from kernels.mlstm import chunkwise_triton as chunkwise

H100_SHARED_BYTES = 232448  # the most dynamic shared memory one block may use on sm_90
HEAD_DIM = 512  # the widest head dims the kernels take (DHQK and DHV)


def _types(dtype: str, in_dtype: str):
    """Argument types of a kernel launch: the pointers named in `in_dtype` hold `dtype`, CHUNKS int32, every other
    pointer (upper-case name, but the sizes NH and S) fp32; scalars are int32 except the float multipliers."""
    def kind(name: str) -> str:
        if name == "CHUNKS":
            return "*i32"
        if name.isupper() and name not in ("NH", "S"):
            return f"*{dtype}" if name in in_dtype.split() else "*fp32"
        return "fp32" if name in ("a_mult", "eps") or name.startswith("sigma") else "i32"
    return kind


def cases() -> dict[str, tuple]:
    """name -> (kernel, argument types, constexprs, pinned config): the local kernel at chunk sizes 256 to 1024, the
    scores and intra kernels (and the TMA forward kernel, descriptors in bf16) at chunk 512 (their tiles do not grow
    with the chunk), every launch case, head dims 512."""
    out = {}
    for chunk in (256, 512, 1024):
        for case in ("fwd", "rev", "fp32"):
            dtype, reverse = ("fp32" if case == "fp32" else "bf16"), case == "rev"
            torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
            whole = states.local_holds_chunk(chunk, torch_dtype)
            tma = whole and dtype == "bf16"  # the launcher's choice on an H100
            config = states.LOCAL_TILES.configs[states.LOCAL_TILES.pinned[case]]
            BA, BX = config.kwargs["BA"], config.kwargs["BX"]
            blocks = {"X_DESC": f"[{chunk},{BX}]", "C_DESC": f"[1,{BA},{BX}]"} if tma else {}
            plain = _types(dtype, "A X OUT_C")
            types = lambda name, plain=plain, blocks=blocks: (f"tensordesc<bf16{blocks[name]}>" if name in blocks
                                                              else plain(name))
            constexprs = dict(DA=HEAD_DIM, DX=HEAD_DIM, REVERSE=reverse, SIG=False, HAS_XAUG=reverse,
                              GATES=not reverse and whole, PRECISION="tf32", BLOCK_L=chunk,
                              BL=states._segment(chunk, torch_dtype), TMA=tma)
            out[f"local-{case}-L{chunk}"] = (states._local_kernel, types, constexprs, config)
    for case in ("h", "dp", "fp32"):
        dtype = "fp32" if case == "fp32" else "bf16"
        types = _types(dtype, "A BM P")
        constexprs = dict(L=512, DA=HEAD_DIM, FWD=case == "h", AUG_ROWS=case == "dp", SIG=False,
                          PRECISION="tf32" if dtype == "bf16" else "tf32x3",
                          BD=states.pow2_block(HEAD_DIM, high=256 if dtype == "bf16" else 64))
        config = chunkwise.SCORES_TILES.configs[chunkwise.SCORES_TILES.pinned[case]]
        out[f"scores-{case}"] = (chunkwise._scores_kernel, types, constexprs, config)
    for case in ("h", "dq", "dk", "dv", "fp32"):
        dtype, mode = ("fp32", "h") if case == "fp32" else ("bf16", case)
        types = _types(dtype, "A P X OUT STM R")
        constexprs = dict(L=512, DA=HEAD_DIM, DX=HEAD_DIM, REVERSE=mode in ("dk", "dv"), FWD=mode == "h",
                          AUG_MODE={"dq": 1, "dk": 2}.get(mode, 0), ROWDOT=mode in ("dq", "dk"), SIG=False,
                          NORMALIZE=True, PRECISION="tf32" if dtype == "bf16" else "tf32x3",
                          BK=states.pow2_block(HEAD_DIM, high=64))
        config = chunkwise.INTRA_TILES.configs[chunkwise.INTRA_TILES.pinned[case]]
        out[f"intra-{case}"] = (chunkwise._intra_kernel, types, constexprs, config)
    config = chunkwise.INTRA_FWD_TILES.configs[chunkwise.INTRA_FWD_TILES.pinned["h"]]
    BK, BR, BJ, BX = 64, config.kwargs["BR"], config.kwargs["BJ"], config.kwargs["BX"]
    blocks = {"A_DESC": f"[{BR},{BK}]", "M_DESC": f"[1,{BK},{BX}]", "P_DESC": f"[{BR},{BJ}]", "X_DESC": f"[{BJ},{BX}]"}
    plain = _types("bf16", "X OUT")
    types = lambda name: f"tensordesc<bf16{blocks[name]}>" if name in blocks else plain(name)
    constexprs = dict(L=512, DA=HEAD_DIM, DX=HEAD_DIM, SIG=False, NORMALIZE=True, BK=BK)
    out["intra_fwd-h"] = (chunkwise._intra_fwd_kernel, types, constexprs, config)
    return out


def shared_bytes(kernel, types, constexprs: dict, config: triton.Config) -> int:
    """Shared memory of `kernel` compiled for sm_90 with `config`; `types` maps an argument's name to its type."""
    constexprs = {**constexprs, **config.kwargs}
    signature = {name: "constexpr" if name in constexprs else types(name) for name in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if signature[name].startswith("*")}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=aligned),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    return compiled.metadata.shared


if __name__ == "__main__":
    print(json.dumps({name: shared_bytes(*case) for name, case in cases().items()}))
