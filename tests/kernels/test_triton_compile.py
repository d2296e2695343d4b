"""Every Triton kernel compiles to Hopper (sm_90) machine code, on a machine without a GPU.

The interpreter runs kernels as numpy and so never meets the compiler's rules (dot shapes,
constexpr use, layouts); compiling ahead of time through triton's bundled ptxas does, and it
also shows the register budget (`REG`), which bounds how many programs share an SM.
"""

import importlib.util
import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs triton, not in interpreter mode",
)

ATTN = dict(
    q_ptr="*T",
    k_ptr="*T",
    v_ptr="*T",
    tables_ptr="*i32",
    lens_ptr="*i64",
    out_ptr="*T",
    part_ptr="*fp32",
    ml_ptr="*fp32",
    scale_log2="fp32",
    stride_qb="i32",
    stride_qh="i32",
    stride_kb="i32",
    stride_kt="i32",
    stride_kh="i32",
    stride_tb="i32",
    stride_ob="i32",
    stride_oh="i32",
)
CASES = {
    "decode_bf16_d64": (
        "attention",
        "_decode_kernel",
        ATTN,
        "bf16",
        dict(
            GROUP=3,
            BLOCK_G=16,
            HEAD_DIM=64,
            BLOCK_D=64,
            BLOCK_SIZE=16,
            BLOCK_N=64,
            NUM_SPLITS=1,
            PRECISION="tf32",
        ),
        8,
        True,
    ),
    "decode_fp32_d128_split": (
        "attention",
        "_decode_kernel",
        ATTN,
        "fp32",
        dict(
            GROUP=4,
            BLOCK_G=16,
            HEAD_DIM=128,
            BLOCK_D=128,
            BLOCK_SIZE=16,
            BLOCK_N=32,
            NUM_SPLITS=4,
            PRECISION="ieee",
        ),
        8,
        True,
    ),
    "merge": (
        "attention",
        "_merge_kernel",
        dict(
            part_ptr="*fp32",
            ml_ptr="*fp32",
            out_ptr="*T",
            stride_ob="i32",
            stride_oh="i32",
            num_heads="i32",
        ),
        "fp16",
        dict(HEAD_DIM=64, BLOCK_D=64, NUM_SPLITS=3, BLOCK_S=4),
        1,
        True,
    ),
    "pack": (
        "kv_pack",
        "_move_kernel",
        dict(
            cache_ptr="*i16",
            table_ptr="*i64",
            buf_ptr="*i16",
            start="i32",
            num_tokens="i32",
            stride_kv="i32",
            stride_blk="i32",
            stride_tok="i32",
            stride_head="i32",
        ),
        None,
        dict(HEADS=8, DIM=128, BLOCK_SIZE=16, BLOCK_T=8, BLOCK_C=1024, TO_CACHE=False),
        4,
        True,
    ),
    "quantize_fp8": (
        "kv_quant",
        "_quantize_kernel",
        dict(
            x_ptr="*T",
            q_ptr="*u8",
            scale_ptr="*fp32",
            num_tokens="i32",
            stride_xt="i32",
            stride_xh="i32",
            stride_qt="i32",
            stride_qh="i32",
            qmax="fp32",
        ),
        "bf16",
        dict(GROUP=16, DIM=128, BLOCK_T=16, BLOCK_D=128, FP8=True),
        4,
        False,
    ),
    "dequantize_int8": (
        "kv_quant",
        "_dequantize_kernel",
        dict(
            q_ptr="*i8",
            scale_ptr="*fp32",
            out_ptr="*T",
            num_tokens="i32",
            stride_qt="i32",
            stride_qh="i32",
            stride_ot="i32",
            stride_oh="i32",
        ),
        "bf16",
        dict(GROUP=16, DIM=128, BLOCK_T=16, BLOCK_D=128, FP8=False),
        4,
        False,
    ),
    "norm": (
        "norm",
        "_add_rms_norm_kernel",
        dict(
            x_ptr="*T",
            res_ptr="*T",
            w_ptr="*T",
            out_ptr="*T",
            new_res_ptr="*T",
            stride_x="i32",
            stride_r="i32",
            n_cols="i32",
            eps="fp32",
        ),
        "bf16",
        dict(HAS_RESIDUAL=True, BLOCK=4096),
        16,
        True,
    ),
    "rotary": (
        "rotary",
        "_rotary_kernel",
        dict(
            qk_ptr="*T",
            cos_ptr="*T",
            sin_ptr="*T",
            stride_qt="i32",
            stride_qh="i32",
            stride_ct="i32",
            num_heads="i32",
        ),
        "bf16",
        dict(HALF=64, BLOCK_H=16, BLOCK_HALF=64),
        4,
        False,
    ),
}


def resource_usage(cubin: bytes) -> str:
    import triton

    tool = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    return next(line for line in out.splitlines() if "REG:" in line)


@pytest.mark.parametrize("case", CASES)
def test_compiles_for_sm90(case):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, args, dtype, consts, warps, fusion = CASES[case]
    kernel = getattr(importlib.import_module(f"kernels.triton.{module}"), name)
    signature = {k: v.replace("T", dtype) if v == "*T" else v for k, v in args.items()}
    signature.update({k: "constexpr" for k in consts})
    names = list(signature)
    src = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()}
    )
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=warps, enable_fp_fusion=fusion),
    )
    usage = resource_usage(compiled.asm["cubin"])
    regs = int(usage.split("REG:")[1].split()[0])
    assert regs <= 128, usage  # two 256-thread programs fit an SM
    assert "STACK:0 " in usage, usage  # no register spills
