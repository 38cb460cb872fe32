"""The GPU's per-element dequantisation (csrc/cuda_dequant_math.cuh) built with the host compiler and
checked against the CPU core on every code of both schemes, for each output dtype and scales of every
size: the e4m3 decode, the x86-style NaN product, and the float16 / bfloat16 conversions of the CUDA
kernel, checked without a GPU. (The host build models the GPU's multiply and add: IEEE round to
nearest even and CUDA's canonical NaN; tests/batches/test_cuda_quant.py runs the kernel itself on a GPU.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from featstore import _backend

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CXX = shutil.which("c++") or shutil.which("g++")
SCALES = np.array(
    [1.0, 2.0**-140, 3.7e-3, 1e30, 0.0, -0.5, 6e-8, 1 / 3, 3e38, -(2.0**-126), np.inf, np.nan], dtype=np.float32
)
SCHEMES = {"int8": 0, "float8_e4m3": 1}
OUTS = {"float32": 0, "float16": 1, "bfloat16": 2}

MAIN = r"""
#include <cstdio>
#include "cuda_dequant_math.cuh"
using namespace featstore;
template <QuantScheme S, OutDtype O> void run(const float* scales, int n) {
    for (int s = 0; s < n; ++s)
        for (unsigned c = 0; c < 256; ++c) {
            unsigned bits = cuda::math::dequant_bits<S, O>(c, scales[s]);
            std::fwrite(&bits, 4, 1, stdout);
        }
}
int main() {
    float scales[64];
    int n = static_cast<int>(std::fread(scales, 4, 64, stdin));
    run<QuantScheme::kInt8, OutDtype::kFloat32>(scales, n);
    run<QuantScheme::kInt8, OutDtype::kFloat16>(scales, n);
    run<QuantScheme::kInt8, OutDtype::kBFloat16>(scales, n);
    run<QuantScheme::kFloat8E4M3, OutDtype::kFloat32>(scales, n);
    run<QuantScheme::kFloat8E4M3, OutDtype::kFloat16>(scales, n);
    run<QuantScheme::kFloat8E4M3, OutDtype::kBFloat16>(scales, n);
}
"""


@pytest.fixture(scope="module")
def host_results(tmp_path_factory) -> np.ndarray:
    """(scheme, out dtype, scale, code) -> the bits the GPU arithmetic gives, as built on the host."""
    folder = tmp_path_factory.mktemp("dequant_math")
    (folder / "main.cpp").write_text(MAIN)
    exe = folder / "dequant_math"
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-I", str(CSRC), str(folder / "main.cpp"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], input=SCALES.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.uint32).reshape(2, 3, len(SCALES), 256)


@pytest.mark.skipif(CXX is None, reason="needs a C++ compiler")
@pytest.mark.skipif("core" not in _backend.available(), reason="needs the compiled core")
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("out", OUTS)
def test_the_gpu_arithmetic_gives_the_cpu_cores_bits_for_every_code(host_results, scheme, out):
    finite = ~np.isnan(SCALES)  # inf * 0 included; NaN scales left out (the core itself is not consistent there)
    codes = np.tile(np.arange(256, dtype=np.uint8), len(SCALES))
    item = 4 if out == "float32" else 2
    want = np.empty(len(SCALES) * 256 * item, dtype=np.uint8)
    with _backend.use("core"):
        _backend.dequant_gather(codes, SCALES.view(np.uint8), 256, 256, np.arange(len(SCALES)), want, scheme, out, 1)
    want_bits = want.view(np.uint32 if item == 4 else np.uint16).reshape(len(SCALES), 256).astype(np.uint32)
    got = host_results[SCHEMES[scheme], OUTS[out]]
    bad = np.argwhere(got[finite] != want_bits[finite])
    assert not len(bad), [(float(SCALES[finite][s]), int(c), hex(got[finite][s, c])) for s, c in bad[:5]]
    if scheme == "float8_e4m3":  # the NaN codes keep their sign, as on the CPU
        nan = got[0, [0x7F, 0xFF]]
        assert nan.tolist() == {"float32": [0x7FC00000, 0xFFC00000], "float16": [0x7E00, 0xFE00],
                                "bfloat16": [0x7FC0, 0xFFC0]}[out]  # fmt: skip
