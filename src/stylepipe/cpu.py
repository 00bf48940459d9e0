"""What this machine's CPU computes natively.

bf16 pays on a CPU with AVX-512 BF16 or AMX, where oneDNN has bf16 kernels;
elsewhere PyTorch emulates it, and a bf16 training step or stylization is
many times slower than float32 (benchmarks/README.md).
"""

from __future__ import annotations

import torch


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX) rather than emulating it."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)  # private helpers: may be absent from a torch version
        try:
            if check is not None and check():
                return True
        except Exception:
            continue
    return False
