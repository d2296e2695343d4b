"""KV gather/pack and scatter/unpack for the handoff.

A layer's paged cache is `layer_cache` [2 (k, v), num_blocks, block_size, kv_heads, head_dim]
in layout "NHD", or [2, num_blocks, kv_heads, block_size, head_dim] in layout "HND". On the wire
one layer's KV for a token range is token-major and contiguous: [2, num_tokens, kv_heads,
head_dim]. Sender and receiver address tokens by position, so differing block sizes and layouts
convert without any special case. Both functions also take several consecutive layers at once,
a cache [L, 2, ...] (a slice `kv_cache[l0:l1]` of the engine's whole cache) with KV [L, 2,
num_tokens, kv_heads, head_dim]: a multi-layer handoff chunk then moves in one call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from kernels.attention import gather_blocks
from kernels.backend import cpu_kernels, use_cpu_kernel, use_triton

LAYOUTS = ("NHD", "HND")


def _block_size(cache: torch.Tensor, layout: str) -> int:
    return cache.shape[-3] if layout == "NHD" else cache.shape[-2]


def _heads_dim(cache: torch.Tensor, layout: str) -> tuple[int, int]:
    if layout == "NHD":
        return cache.shape[-2], cache.shape[-1]
    return cache.shape[-3], cache.shape[-1]


def _packed_shape(cache: torch.Tensor, layout: str, num_tokens: int) -> tuple[int, ...]:
    """[(L,) 2, num_tokens, kv_heads, head_dim] for a layer's (or layers') cache."""
    return (*cache.shape[:-5], 2, num_tokens, *_heads_dim(cache, layout))


def _tokens(layer_cache: torch.Tensor, block_id: torch.Tensor, layout: str) -> torch.Tensor:
    """A token-major view [2, block_size, kv_heads, head_dim] of one block of the cache."""
    block = layer_cache[:, int(block_id)]
    return block if layout == "NHD" else block.transpose(1, 2)


def _words(*rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """2-D row views as int64 words when all of their row sizes and offsets allow it.

    Like gather_blocks: index ops on 16-bit rows move element by element (index_copy_ ~1.7x
    slower on this CPU); words move the same bytes in a quarter of the steps.
    """
    if all(
        r.shape[1] * r.element_size() % 8 == 0 and r.storage_offset() * r.element_size() % 8 == 0
        for r in rows
    ):
        return tuple(r.view(torch.int64) for r in rows)
    return rows


def _split(start: int, total: int, bs: int) -> tuple[int, int, int]:
    """Cut tokens [start, start + total) at block boundaries: (head, full blocks, tail) sizes."""
    head = min(-start % bs, total)
    full = (total - head) // bs
    return head, full, total - head - full * bs


def _check_cache(cache: torch.Tensor, block_table: torch.Tensor, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if cache.dim() not in (5, 6) or cache.shape[-5] != 2:
        raise ValueError(
            f"cache must be one layer [2, num_blocks, ...] (5 dims) or layers "
            f"[L, 2, num_blocks, ...] (6 dims) for layout {layout}, got shape "
            f"{tuple(cache.shape)}"
        )
    if not cache.is_contiguous():
        raise ValueError(
            "cache must be contiguous (a layer or a layer range of the engine's kv_cache)"
        )
    if block_table.dim() != 1 or block_table.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"block_table must be a 1-D int64 tensor, got {block_table.dtype} of "
            f"shape {tuple(block_table.shape)}"
        )


def _check_range(
    cache: torch.Tensor,
    block_table: torch.Tensor,
    layout: str,
    start: int,
    end: int,
    check_ids: bool = True,
) -> None:
    bs = _block_size(cache, layout)
    capacity = block_table.shape[0] * bs
    if not 0 <= start <= end <= capacity:
        raise ValueError(
            f"token range [{start}, {end}) outside the {block_table.shape[0]} "
            f"blocks of {bs} tokens (capacity {capacity})"
        )
    if end > start and check_ids:
        used = block_table[start // bs : (end - 1) // bs + 1]
        lo, hi = int(used.min()), int(used.max())
        if lo < 0 or hi >= cache.shape[-4]:
            raise ValueError(
                f"block ids in [{lo}, {hi}] outside the cache's {cache.shape[-4]} blocks"
            )


def pack_kv_ref(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    start: int,
    end: int,
    layout: str = "NHD",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Torch reference of `pack_kv`."""
    if layer_cache.dim() == 6:  # several layers: each on its own
        if out is None:
            out = layer_cache.new_empty(_packed_shape(layer_cache, layout, end - start))
        for cache, packed in zip(layer_cache, out):
            pack_kv_ref(cache, block_table, start, end, layout, packed)
        return out
    heads, dim = _heads_dim(layer_cache, layout)
    bs, nb, total = _block_size(layer_cache, layout), layer_cache.shape[1], end - start
    out = layer_cache.new_empty(2, total, heads, dim) if out is None else out
    head, full, tail = _split(start, total, bs)
    blk = start // bs
    if head:  # partial first block (or a range inside one block)
        off = start % bs
        out[:, :head].copy_(_tokens(layer_cache, block_table[blk], layout)[:, off : off + head])
        blk += 1
    if full:
        # Whole blocks go straight into `out` (no staging copy), whatever the alignment of start.
        ids = block_table[blk : blk + full].to(layer_cache.device, torch.int64)
        span = slice(head, head + full * bs)
        if layout == "NHD":
            for i in range(2):
                src, dst = _words(layer_cache[i].view(nb, -1), out[i, span].view(full, -1))
                torch.index_select(src, 0, ids, out=dst)
        else:
            # HND must transpose anyway: one gather of k and v blocks, then one strided copy.
            both = gather_blocks(
                layer_cache.view(2 * nb, *layer_cache.shape[2:]), torch.cat([ids, ids + nb])
            )
            out[:, span].view(2, full, bs, heads, dim).copy_(
                both.view(2, full, heads, bs, dim).transpose(2, 3)
            )
        blk += full
    if tail:  # partial last block
        out[:, total - tail :].copy_(_tokens(layer_cache, block_table[blk], layout)[:, :tail])
    return out


def pack_kv(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    start: int,
    end: int,
    layout: str = "NHD",
    backend: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gather tokens [start, end) of one layer (or several) from a sequence's blocks,
    token-major.

    layer_cache: [2, num_blocks, block_size, kv_heads, head_dim] ("NHD") or [2, num_blocks,
    kv_heads, block_size, head_dim] ("HND"), contiguous, any dtype; or consecutive layers
    [L, 2, ...] of either (a slice of the engine's kv_cache). block_table: 1-D int64 (or
    int32) block ids of the sequence, on any device; token p lives in block
    block_table[p // block_size] at offset p % block_size. Requires
    0 <= start <= end <= len(block_table) * block_size.
    Returns a contiguous [(L,) 2, end - start, kv_heads, head_dim] tensor in the cache's
    dtype, bit-identical to the cached values: `out` when given (contiguous, that shape and
    dtype, on the cache's device; e.g. a message's bytes), else a new one. Raises ValueError
    on bad shapes, dtypes or ranges. `backend`: see `kernels.backend` (CUDA caches take
    Triton, NHD CPU caches the C++ kernel, the rest the reference).
    """
    _check_cache(layer_cache, block_table, layout)
    cpu_kernel = layout == "NHD" and use_cpu_kernel(layer_cache, backend, exact=True)
    # The C++ kernel checks the block ids itself, before it copies (a handoff calls this per
    # chunk: the torch min/max here would cost more than the copy's overhead).
    _check_range(layer_cache, block_table, layout, start, end, check_ids=not cpu_kernel)
    shape = _packed_shape(layer_cache, layout, end - start)
    if out is not None and (
        tuple(out.shape) != shape
        or not out.is_contiguous()
        or out.dtype != layer_cache.dtype
        or out.device != layer_cache.device
    ):
        raise ValueError(
            f"out must be a contiguous {list(shape)} {layer_cache.dtype} tensor "
            f"on {layer_cache.device}, got {tuple(out.shape)} {out.dtype} on "
            f"{out.device}"
        )
    if use_triton(layer_cache, backend):
        from kernels.triton.kv_pack import pack_kv_triton

        layers = [layer_cache] if layer_cache.dim() == 5 else list(layer_cache)
        parts = [pack_kv_triton(c, block_table, start, end, layout) for c in layers]
        packed = parts[0] if layer_cache.dim() == 5 else torch.stack(parts)
        return packed if out is None else out.copy_(packed)
    if cpu_kernel:
        out = layer_cache.new_empty(shape) if out is None else out
        with _ids_checked():
            cpu_kernels().pack_kv_nhd(layer_cache, _ids(block_table), start, out)
        return out
    return pack_kv_ref(layer_cache, block_table, start, end, layout, out)


def _ids(block_table: torch.Tensor) -> torch.Tensor:
    if block_table.dtype == torch.int64 and block_table.is_contiguous():
        return block_table
    return block_table.to(torch.int64).contiguous()


@contextlib.contextmanager
def _ids_checked() -> Iterator[None]:
    """The C++ kernels' block id check (made before anything is copied) as ValueError."""
    try:
        yield
    except RuntimeError as e:
        if "outside the cache's" not in str(e):
            raise
        raise ValueError(str(e).splitlines()[0]) from None


def unpack_kv_ref(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    data: torch.Tensor,
    start: int,
    layout: str = "NHD",
) -> None:
    """Torch reference of `unpack_kv`."""
    if layer_cache.dim() == 6:  # several layers: each on its own
        for cache, kv in zip(layer_cache, data):
            unpack_kv_ref(cache, block_table, kv, start, layout)
        return
    bs, nb, total = _block_size(layer_cache, layout), layer_cache.shape[1], data.shape[1]
    data = data.to(layer_cache.dtype).contiguous()
    head, full, tail = _split(start, total, bs)
    blk = start // bs
    if head:  # partial first block (or a range inside one block)
        off = start % bs
        _tokens(layer_cache, block_table[blk], layout)[:, off : off + head].copy_(data[:, :head])
        blk += 1
    if full:
        ids = block_table[blk : blk + full].to(layer_cache.device, torch.int64)
        span = slice(head, head + full * bs)
        if layout == "NHD":
            # k and v separately: each data[i, span] is contiguous, so no staging copy.
            for i in range(2):
                dst, src = _words(layer_cache[i].view(nb, -1), data[i, span].view(full, -1))
                dst.index_copy_(0, ids, src)
        else:
            # HND must transpose anyway; that one copy also stacks k and v for a single scatter.
            src = data[:, span].reshape(2, full, bs, *data.shape[2:]).transpose(2, 3)
            dst, src = _words(layer_cache.view(2 * nb, -1), src.reshape(2 * full, -1))
            dst.index_copy_(0, torch.cat([ids, ids + nb]), src)
        blk += full
    if tail:  # partial last block
        _tokens(layer_cache, block_table[blk], layout)[:, :tail].copy_(data[:, total - tail :])


def unpack_kv(
    layer_cache: torch.Tensor,
    block_table: torch.Tensor,
    data: torch.Tensor,
    start: int,
    layout: str = "NHD",
    backend: str | None = None,
) -> None:
    """Scatter token-major KV into tokens [start, start + T) of a sequence's blocks, in place.

    layer_cache and block_table as for `pack_kv` (the receiver's own block size and layout;
    one layer, or L consecutive ones). data: [2, T, kv_heads, head_dim] for one layer, [L, 2,
    T, kv_heads, head_dim] for L, floating point, cast to the cache's dtype (bit-exact when
    the dtypes match). Only those T token slots change; every other token and block is left
    untouched. Requires 0 <= start and start + T <= len(block_table) * block_size; block ids
    must not repeat. Raises ValueError on bad shapes, dtypes or ranges. `backend`: as for
    `pack_kv`.
    """
    _check_cache(layer_cache, block_table, layout)
    if data.dim() != layer_cache.dim() - 1 or tuple(data.shape) != _packed_shape(
        layer_cache, layout, data.shape[-3]
    ):
        heads, dim = _heads_dim(layer_cache, layout)
        lead = f"[{layer_cache.shape[0]}, 2" if layer_cache.dim() == 6 else "[2"
        raise ValueError(
            f"data must be {lead}, num_tokens, {heads}, {dim}] to match the cache, "
            f"got {tuple(data.shape)}"
        )
    if not data.is_floating_point():
        raise ValueError(f"data must be floating point, got {data.dtype}")
    cpu_kernel = (
        layout == "NHD"
        and data.dtype == layer_cache.dtype
        and use_cpu_kernel(layer_cache, backend, exact=True)
    )
    _check_range(
        layer_cache, block_table, layout, start, start + data.shape[-3], check_ids=not cpu_kernel
    )
    if use_triton(layer_cache, backend):
        from kernels.triton.kv_pack import unpack_kv_triton

        pairs = [(layer_cache, data)] if layer_cache.dim() == 5 else zip(layer_cache, data)
        for cache, kv in pairs:
            unpack_kv_triton(cache, block_table, kv, start, layout)
        return
    if cpu_kernel:
        with _ids_checked():
            cpu_kernels().unpack_kv_nhd(layer_cache, _ids(block_table), data.contiguous(), start)
        return
    unpack_kv_ref(layer_cache, block_table, data, start, layout)
