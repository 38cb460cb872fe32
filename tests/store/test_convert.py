"""featstore.store.convert and `featstore convert`: a new store of another dtype, provenance carried
over, the conversion recorded, bounded chunks, and one-line refusals."""

import numpy as np
import pytest
import torch

from featstore import FeatureStore
from featstore.cli import main
from featstore.store.convert import convert_store

torch.set_num_threads(1)


def source(root) -> FeatureStore:
    store = FeatureStore.create(root)
    g = torch.Generator().manual_seed(0)
    for key, shape in (("enc/pooled", (16,)), ("enc/grid", (4, 8))):
        x = torch.randn((25, *shape), generator=g).half()
        with store.create_feature_set(key, 25, shape, "float16", {"model": key}, np.arange(25) % 4) as w:
            w.write(0, x)
    return store.refresh()


def test_convert_to_int8_and_back(tmp_path):
    src = source(tmp_path / "src")
    dst = convert_store(tmp_path / "src", tmp_path / "dst", "int8")
    assert dst.keys() == src.keys()
    for key in src.keys():
        a, q = src[key], dst[key]
        assert q.quant.scheme == "int8" and q.dtype == torch.float16 and torch.equal(q.labels, a.labels)
        assert q.metadata["model"] == key  # provenance carried over
        (conv,) = q.metadata["conversions"]
        assert conv["source_store"] == str((tmp_path / "src").resolve()) and conv["dtype"] == "int8"
        assert conv["scheme"] == "int8" and conv["source_dtype"] == "float16" and conv["featstore_version"]
        assert conv["source_checksum"]["entry"] == a.record.to_json()["checksum"]["entry"]
        bound = q.scales.unsqueeze(-1) / 2 + 1e-3 * a[:].float().abs()  # scale/2, plus the final f16 rounding
        assert bool(((q[:].float() - a[:].float()).abs() <= bound).all())
    assert dst.verify()["rows_without_checksum"] == 0
    back = convert_store(tmp_path / "dst", tmp_path / "back", "float16", keys=["enc/grid"])
    assert back.keys() == ["enc/grid"] and back["enc/grid"].quant is None
    assert torch.equal(back["enc/grid"][:], dst["enc/grid"][:])  # dequantised
    assert [c["scheme"] for c in back["enc/grid"].metadata["conversions"]] == ["int8", None]


def test_convert_streams_in_chunks(tmp_path, monkeypatch):
    from featstore.store import convert

    source(tmp_path / "src")
    writes = []
    real = convert.FeatureStore.create_feature_set

    def spy(self, *args, **kwargs):
        writer = real(self, *args, **kwargs)
        original = writer.write
        writer.write = lambda start, rows: (writes.append(len(rows)), original(start, rows))[1]
        return writer

    monkeypatch.setattr(convert.FeatureStore, "create_feature_set", spy)
    monkeypatch.setattr(convert, "CHUNK_BYTES", 10 * 32 * 4)
    convert_store(tmp_path / "src", tmp_path / "dst", "float8_e4m3", keys=["enc/grid"])
    assert writes == [10, 10, 5]


def test_cli_convert_and_its_refusals(tmp_path, capsys):
    source(tmp_path / "src")
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    assert main(["convert", src, dst, "--dtype", "float8_e4m3", "--keys", "enc/pooled"]) == 0
    assert "enc/pooled" in capsys.readouterr().out
    assert FeatureStore.open(dst)["enc/pooled"].quant.scheme == "float8_e4m3"
    cases = [
        ([src, dst, "--dtype", "int8"], "exists and is not an empty folder"),
        ([src, src, "--dtype", "int8"], "must be a new store apart from the source"),
        ([src, str(tmp_path / "x"), "--dtype", "int4"], "unsupported dtype 'int4'"),
        ([src, str(tmp_path / "y"), "--dtype", "int8", "--keys", "nope"], "nope"),
    ]
    for args, message in cases:
        code = main(["convert", *args])
        err = capsys.readouterr().err
        assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["convert", src, src, "--dtype", "int8"]) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_to_a_plain_dtype(tmp_path, dtype):
    src = source(tmp_path / "src")
    dst = convert_store(tmp_path / "src", tmp_path / "dst", dtype)
    assert torch.equal(dst["enc/pooled"][:], src["enc/pooled"][:].to(getattr(torch, dtype)))
