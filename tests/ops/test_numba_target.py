"""numba's target for the CPU kernels: 512-bit vectors on AVX-512 CPUs, same results either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba.core.codegen import get_host_cpu_features

from zdask.ops._numba_target import NO_256_BIT_PREFERENCE, wide_vector_features

HOST_HAS_AVX512 = wide_vector_features(get_host_cpu_features()) is not None
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wide_vector_features_only_with_avx512():
    assert wide_vector_features("+64bit,+avx2,-avx512f,+fma") is None
    assert wide_vector_features("+avx2,+avx512f,-avx512vl") is None
    assert wide_vector_features("+neon,+fp-armv8") is None
    got = wide_vector_features("+avx2,+avx512f,+avx512vl,+prefer-256-bit")
    assert got == "+avx2,+avx512f,+avx512vl," + NO_256_BIT_PREFERENCE


def _child(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (numba's target is chosen once per process)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    full_env.update(env)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_SETTING = """
import json, numba
import zdask.ops
print(json.dumps({"features": numba.config.CPU_FEATURES}))
"""


def test_import_sets_the_target_unless_the_user_chose_one():
    default = _child(_SETTING)["features"]
    if HOST_HAS_AVX512:
        assert default.endswith(NO_256_BIT_PREFERENCE) and "+avx512f" in default.split(",")
    else:
        assert default is None
    assert _child(_SETTING, ZDASK_NUMBA_512="0")["features"] is None
    assert _child(_SETTING, NUMBA_CPU_FEATURES="+avx2")["features"] == "+avx2"


_ASM = """
import json, numpy as np
from numba import njit
from zdask.ops import _stacking_numba as K
f = njit(K.sort_network.py_func)  # a fresh, uncached copy, so that its assembly is at hand
s = np.zeros((4, 64), np.float32)
f(s, 64, np.array([0, 1]), np.array([1, 2]))
asm = next(iter(f.inspect_asm().values()))
print(json.dumps({"zmm": asm.count("zmm"), "ymm": asm.count("ymm")}))
"""


@pytest.mark.skipif(not HOST_HAS_AVX512, reason="the CPU has no AVX-512")
def test_sorting_network_uses_512_bit_registers():
    wide = _child(_ASM)
    narrow = _child(_ASM, ZDASK_NUMBA_512="0")
    assert wide["zmm"] > 0
    assert narrow["zmm"] == 0 and narrow["ymm"] > 0


_RESULTS = """
import hashlib, json, numpy as np
from zdask.ops import stacking as S
rng = np.random.default_rng(3)
x = rng.normal(100, 5, (23, 17, 40, 3)).astype(np.float32)
x[rng.random(x.shape) < 0.1] = np.nan
x[rng.random(x.shape) < 0.03] += 400
w = rng.random(23)
out = {}
for m in ("kappa_sigma", "winsorized"):  # the two default rejectors (each compile costs seconds)
    for name, kw in (("", {}), ("_w", {"weights": w})):
        r = getattr(S, m)(x, **kw)
        out[m + name] = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in r]
print(json.dumps(out))
"""


@pytest.mark.skipif(not HOST_HAS_AVX512, reason="the CPU has no AVX-512")
def test_results_bit_identical_with_256_and_512_bit_vectors(capsys):
    import numba

    assert numba.config.CPU_FEATURES.endswith(NO_256_BIT_PREFERENCE)  # this process: 512-bit
    exec(compile(_RESULTS, "<results>", "exec"), {})  # same code as the 256-bit child
    wide = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    narrow = _child(_RESULTS, ZDASK_NUMBA_512="0")
    assert len(wide) == 4 and wide.keys() == narrow.keys()
    for key in wide:
        assert wide[key] == narrow[key], key
