"""How numba compiles zdask's CPU kernels for this machine: 512-bit vectors where the CPU has them.

LLVM's tuning for most AVX-512 CPUs (Skylake-SP to Sapphire Rapids) prefers
256-bit vectors, because the first AVX-512 parts lowered their clock under
512-bit code.  The stacking kernels are loops of compare / min / max / add
across a tile's pixels, bound by the vector units: with 512-bit vectors the
sorting network and the accumulating passes do twice the pixels per
instruction.  Measured on an AVX-512 Xeon (2 vCPUs), one core, 135-row bands
of 1920 × 3 float32, N = 30 and 50: the kernels 8–21 % faster, with
bit-identical results (each pixel's arithmetic is the same; only the number
of pixels per instruction changes).

numba compiles for the host CPU with the features that
``numba.config.CPU_FEATURES`` names (``None``: the host's own).  Adding
``-prefer-256-bit`` to them lifts the preference; it is a tuning flag, so
the instruction set stays the host's.  The setting is process-wide and is
read when numba compiles its first function, so it is made when zdask's
kernels are imported (before any of them compiles).  It is left alone when
the user chose numba's target (``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``,
e.g. for caches shared between machines), when the CPU has no AVX-512, and
when ``ZDASK_NUMBA_512=0``.  Compiled kernels are cached per feature string,
so the two settings never share a cache entry.
"""

from __future__ import annotations

import os

import numba
from numba.core.codegen import get_host_cpu_features

#: appended to the host's features: the LLVM tuning flag that makes it prefer 256-bit vectors
NO_256_BIT_PREFERENCE = "-prefer-256-bit"


def wide_vector_features(host_features: str) -> str | None:
    """The feature string that lets LLVM use 512-bit vectors, or None where there are none.

    ``host_features`` is LLVM's comma-separated ``+feature``/``-feature`` list.
    """
    flags = host_features.split(",")
    if "+avx512f" not in flags or "+avx512vl" not in flags:
        return None
    return ",".join(f for f in flags if f != "+prefer-256-bit") + "," + NO_256_BIT_PREFERENCE


def prefer_512_bit_vectors() -> bool:
    """Set ``numba.config.CPU_FEATURES`` for 512-bit vectors unless the user chose the target.

    Returns whether the setting is in place.  Effective only if numba has
    not compiled anything yet in this process (its CPU target reads the
    setting once); otherwise the kernels keep 256-bit vectors, same results.
    """
    if os.environ.get("ZDASK_NUMBA_512", "1").strip() == "0":
        return False
    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    current = numba.config.CPU_FEATURES
    if current is not None:
        return current.endswith(NO_256_BIT_PREFERENCE)
    features = wide_vector_features(get_host_cpu_features())
    if features is None:
        return False
    numba.config.CPU_FEATURES = features
    return True
