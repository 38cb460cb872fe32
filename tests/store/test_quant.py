"""Compact storage (featstore.store.quant): int8 / float8 e4m3 sets round trip within their bounds,
every gather path agrees bit for bit, stock safetensors reads the files, and a quantised set is told
apart from a raw int8 one."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from featstore import FeatureStore
from featstore.errors import VerificationError, WriterConflictError
from featstore.store.quant import error_bound, quantise

torch.set_num_threads(1)

SCHEMES = ["int8", "float8_e4m3"]
OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def features(n: int, row_shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *row_shape), generator=g)
    # vectors of very different sizes (as tokens of a patch grid are), and one all-zero row
    x = x * torch.logspace(-3, 2, x[..., :1].numel()).view(*x.shape[:-1], 1)
    x[3] = 0
    return x.half()


def write(root, x: torch.Tensor, scheme: str, key="enc/q", labels=True):
    store = FeatureStore.create(root)
    lab = np.arange(len(x)) % 3 if labels else None
    with store.create_feature_set(key, len(x), x.shape[1:], "float16", {"m": 1}, lab, quant=scheme) as w:
        w.write(0, x[:5])
        w.write(min(5, len(x)), x[5:])
    return store.refresh()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("row_shape", [(24,), (5, 16)])
def test_round_trip_within_the_bound(tmp_path, scheme, row_shape):
    x = features(40, row_shape)
    fs = write(tmp_path / "s", x, scheme)["enc/q"]
    assert fs.dtype == torch.float16 and fs.quant.scheme == scheme
    assert fs.scales.shape == (40, *row_shape[:-1]) and fs.scales.dtype == torch.float32
    got = fs.gather(np.arange(40), dtype=torch.float32)
    bound = error_bound(scheme, x.float(), fs.scales)
    err = (got - x.float()).abs()
    assert bool((err <= bound * (1 + 1e-6) + 1e-30).all()), float((err - bound).max())
    assert bool((got[3] == 0).all()) and float(fs.scales[3].abs().max()) == 0  # a zero row stays zero
    assert fs[:].dtype == torch.float16 and torch.equal(fs[:], got.half())  # f16 = one rounding of the f32 result


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_path_and_backend_agrees_bitwise(tmp_path, scheme, backend):
    x = features(50, (3, 32))
    fs = write(tmp_path / "s", x, scheme)["enc/q"]
    rows = np.array([7, 0, 49, 7, 3, 21], dtype=np.int64)
    codes = fs.to_torch()[rows].to(torch.float32) if scheme == "int8" else fs.to_torch()[rows].float()
    reference = codes * fs.scales[rows].unsqueeze(-1)  # float32(code) * scale in torch
    for dtype in OUT_DTYPES:
        mmap = fs.gather(rows, read="mmap", dtype=dtype)
        direct = fs.gather(rows, read="direct", dtype=dtype)
        out = torch.empty((len(rows), 3, 32), dtype=dtype)
        fs.gather_into(rows, out, read="mmap")
        want = reference.to(dtype)
        for got in (mmap, direct, out):
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (dtype, backend)
    assert torch.equal(fs[[7, 0]], fs.gather([7, 0])) and torch.equal(fs[10:12], fs.gather([10, 11]))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("hold", [True, False])
def test_large_rows_decoded_as_they_land_agree_bitwise(tmp_path, monkeypatch, scheme, hold, backend):
    """Rows of 64 KiB and more are read with O_DIRECT and decoded from their pages as each lands: the
    same bits as the mapped gather, for every output dtype, repeated rows too, scales held or not."""
    from featstore.store import scales as scales_module

    monkeypatch.setattr(scales_module, "HOLD_BYTES", 1 << 20 if hold else 0)
    x = features(12, (257, 256))  # 65,792 bytes of codes a row
    fs = write(tmp_path / "s", x, scheme)["enc/q"]
    if not fs.direct.decodes_as_it_reads():
        pytest.skip(f"O_DIRECT is not supported on {tmp_path}")
    rows = np.array([11, 0, 5, 5, 6, 7, 3], dtype=np.int64)
    for dtype in OUT_DTYPES:
        direct = fs.gather(rows, read="direct", dtype=dtype)
        assert torch.equal(direct.view(torch.uint8), fs.gather(rows, read="mmap", dtype=dtype).view(torch.uint8))


@pytest.mark.damages_store
@pytest.mark.parametrize("hold", [True, False])
def test_direct_reads_take_the_scales_without_the_mapping(tmp_path, monkeypatch, hold):
    """The direct path's scales, held in memory (read once) or read with each batch, are the rows' own;
    a file cut short in its scales is a CorruptFileError naming the set, never a SIGBUS."""
    from featstore.errors import CorruptFileError
    from featstore.store import scales as scales_module

    monkeypatch.setattr(scales_module, "HOLD_BYTES", 1 << 20 if hold else 0)
    x = features(60, (4, 16))
    fs = write(tmp_path / "s", x, "int8")["enc/q"]
    rows = np.array([59, 0, 31, 31, 2], dtype=np.int64)
    assert torch.equal(fs.gather(rows, read="direct"), fs.gather(rows, read="mmap"))
    assert (fs.direct_scales.in_memory is not None) == hold
    fresh = FeatureStore.open(tmp_path / "s")["enc/q"]
    with open(fresh.path, "r+b") as f:  # cut inside the scales: the codes are all there
        f.truncate(fresh.header.data_start + fresh.record.layout.scales_begin + 8)
    with pytest.raises(CorruptFileError, match="enc/q"):
        fresh.gather(rows, read="direct")


def test_core_and_numpy_give_the_same_bytes(tmp_path):
    from featstore import _backend

    if "core" not in _backend.available():
        pytest.skip("the compiled core is not built")
    fs = write(tmp_path / "s", features(30, (40,)), "float8_e4m3")["enc/q"]
    rows = np.arange(30)[::-1].copy()
    results = {}
    for name in ("core", "numpy"):
        with _backend.use(name):
            results[name] = [fs.gather(rows, dtype=d).view(torch.uint8) for d in OUT_DTYPES]
    assert all(torch.equal(a, b) for a, b in zip(results["core"], results["numpy"], strict=True))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stock_safetensors_reads_the_file(tmp_path, scheme):
    x = features(12, (4, 8))
    fs = write(tmp_path / "s", x, scheme)["enc/q"]
    tensors = load_file(str(fs.path))
    assert set(tensors) == {"features", "scales", "labels"}
    assert tensors["features"].dtype == (torch.int8 if scheme == "int8" else torch.float8_e4m3fn)
    assert torch.equal(tensors["scales"], fs.scales)
    by_hand = (tensors["features"].float() * tensors["scales"].unsqueeze(-1)).half()
    assert torch.equal(by_hand, fs[:])


def test_quantised_and_raw_int8_are_told_apart(tmp_path):
    store = write(tmp_path / "s", features(10, (8,)), "int8")
    with store.create_feature_set("enc/raw", 4, (8,), "int8") as w:
        w.write(0, torch.arange(32, dtype=torch.int8).view(4, 8))
    store = store.refresh()
    q, raw = store["enc/q"], store["enc/raw"]
    assert q.record.dtype == raw.record.dtype == "int8"
    assert q.quant is not None and raw.quant is None and raw.dtype == torch.int8 and q.dtype == torch.float16
    assert torch.equal(raw[:], torch.arange(32, dtype=torch.int8).view(4, 8))
    manifest = json.loads((tmp_path / "s" / "featstore.json").read_text())
    assert manifest["format_version"] == 3  # a featstore that reads 2 refuses it: no codes read as values
    assert manifest["feature_sets"]["enc/q"]["quant"] == {"scheme": "int8", "dtype": "float16", "scales": "vector"}
    assert "quant" not in manifest["feature_sets"]["enc/raw"]
    assert "featstore.quant" in load_header_metadata(q.path) and "featstore.quant" not in load_header_metadata(raw.path)
    store.delete("enc/q")
    assert json.loads((tmp_path / "s" / "featstore.json").read_text())["format_version"] == 2


def load_header_metadata(path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])["__metadata__"]


def test_verify_covers_the_scales(tmp_path):
    fs = write(tmp_path / "s", features(20, (8,)), "int8")["enc/q"]
    store = FeatureStore.open(tmp_path / "s")
    assert store.verify()["rows_without_checksum"] == 0
    offset = fs.header.data_start + fs.record.layout.scales_begin + 4 * 5
    fs.path.chmod(0o644)
    with open(fs.path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00\x00\x80\x7f")  # row 5's scale
    fs.path.chmod(0o444)
    with pytest.raises(VerificationError, match="rows 0..20"):
        store.verify()


def test_pt_export_is_dequantised(tmp_path):
    fs = write(tmp_path / "s", features(9, (6,)), "float8_e4m3")["enc/q"]
    path = fs.export_pt()
    loaded = torch.load(path, weights_only=True)
    assert loaded["features"].dtype == torch.float16 and torch.equal(loaded["features"], fs[:])
    assert loaded["metadata"]["dtype"] == "float16" and loaded["metadata"]["featstore_quant"]["scheme"] == "float8_e4m3"
    assert FeatureStore.open(tmp_path / "s").verify()["feature_sets"] == 1


def test_bad_input(tmp_path):
    store = FeatureStore.create(tmp_path / "s")
    with pytest.raises(ValueError, match="only float16, bfloat16, float32 rows can be quantised"):
        store.create_feature_set("a", 2, (4,), "int32", quant="int8")
    with pytest.raises(ValueError, match="unknown quantisation 'int4'"):
        store.create_feature_set("a", 2, (4,), "float16", quant="int4")
    w = store.create_feature_set("a", 2, (4,), "float32", quant="int8")
    with pytest.raises(ValueError, match="NaN or infinite"):
        w.write(0, torch.tensor([[1.0, float("inf"), 0, 0]] * 2))
    w.close()
    with pytest.raises(WriterConflictError, match="cannot resume, its dtype is .int8."):
        store.create_feature_set("a", 2, (4,), "float32", quant="float8_e4m3", resume=True)
    fs = write(tmp_path / "t", features(4, (4,)), "int8")["enc/q"]
    with pytest.raises(ValueError, match="quantised; gathers return float16, bfloat16 or float32"):
        fs.gather([0], dtype=torch.int32)


def test_quantise_codes():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scales = quantise(x, "int8")
    assert codes.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0]] and scales.tolist() == [pytest.approx(1 / 127), 0.0]
    codes, scales = quantise(x, "float8_e4m3")
    assert codes.float().tolist() == [[448.0, -224.0, 112.0, 0.0], [0.0] * 4]


@pytest.mark.parametrize("d", [40, 37, 5])  # whole 8-wide vector steps, a tail, only a tail
@pytest.mark.parametrize("scheme", SCHEMES)
def test_kernel_rounds_like_torch_at_the_extremes(backend, scheme, d):
    """Scales from 1e-9 to 1e3: float16 subnormals, overflow to inf, bfloat16 and float32 all agree bitwise
    with torch's float32(code) * scale, rounded by torch."""
    from featstore import _backend

    rng = np.random.default_rng(1)
    n, groups = 200, 3
    codes = rng.integers(0, 256, (n, groups * d), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0  # the e4m3 NaN codes never appear in a quantised set
    scales = (rng.standard_normal(n * groups) * 10.0 ** rng.integers(-9, 4, n * groups)).astype(np.float32)
    idx = rng.integers(0, n, 500).astype(np.int64)
    q = torch.from_numpy(codes[idx]).view(torch.int8 if scheme == "int8" else torch.float8_e4m3fn).float()
    exact = (q.view(500, groups, d) * torch.from_numpy(scales).view(n, groups, 1)[idx]).view(500, -1)
    for dtype in OUT_DTYPES:
        out = torch.empty(500, groups * d, dtype=dtype)
        _backend.dequant_gather(
            codes, scales, groups * d, d, idx, out.view(torch.uint8).numpy(), scheme, str(dtype)[6:]
        )
        assert torch.equal(out.view(torch.uint8), exact.to(dtype).view(torch.uint8)), dtype


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_every_e4m3_code_decodes_like_torch(backend, dtype):
    """All 256 e4m3 codes (subnormals, both zeros, 448, and the NaN codes 0x7f / 0xff) through the
    kernel's vector steps and its tail: the same values as torch's float8_e4m3fn, NaN where torch has NaN."""
    from featstore import _backend

    codes = np.arange(256, dtype=np.uint8).reshape(1, 256)
    scales = np.array([1.5], dtype=np.float32)
    out = torch.empty(1, 256, dtype=dtype)
    _backend.dequant_gather(
        codes, scales, 256, 256, np.zeros(1, np.int64), out.view(torch.uint8).numpy(), "float8_e4m3", str(dtype)[6:]
    )
    exact = (torch.from_numpy(codes).view(torch.float8_e4m3fn).float() * 1.5).to(dtype)
    nan = torch.isnan(exact)
    assert nan.sum() == 2 and torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.uint8), exact[~nan].view(torch.uint8))
