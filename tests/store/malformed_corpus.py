"""A corpus of malformed stores and ``.pt`` files, made on the fly from one small valid store.

Each case damages a copy of the store (or writes a ``.pt`` file) and returns the call that must fail:
``FeatureStore.open(root)`` or ``store.import_pt(path, ...)``. It also says which featstore error
must come out, and regexes for the file and the field (or reason) the message has to name.
Used by tests/store/test_malformed.py (correctness, memory, canary) and benchmarks/reliability/malformed.py
(timings).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from featstore import CorruptFileError, FeatureStore, FormatError, FormatVersionError

KEY = "enc/layer_1"
FILE = "enc/layer_1.safetensors"
N_ROWS, ROW = 10, 4  # float16 features (80 bytes) + int64 labels (80 bytes)
ST_FILE = r"layer_1\.safetensors"
MANIFEST = r"featstore\.json"


@dataclass(frozen=True)
class Case:
    """One malformed input: ``make(root, canary)`` damages the valid store at ``root`` and returns the call."""

    name: str
    make: Callable[[Path, Path], Callable[[], object]]
    error: type
    file: str  # regex the message must match: the damaged file
    field: str  # regex the message must match: the field or reason


def make_valid_store(root: Path) -> None:
    """The store every case starts from: one finished feature set with labels."""
    store = FeatureStore.create(root)
    data = torch.arange(N_ROWS * ROW, dtype=torch.float16).view(N_ROWS, ROW)
    with store.create_feature_set(KEY, N_ROWS, (ROW,), "float16", {"seed": 0}, list(range(N_ROWS))) as w:
        w.write(0, data)


# ---- helpers that damage the store ------------------------------------------------------------


def _open(root: Path):
    return lambda: FeatureStore.open(root)


def _st_path(root: Path) -> Path:
    path = root / FILE
    os.chmod(path, 0o644)
    return path


def _header(root: Path) -> dict:
    raw = (root / FILE).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def raw_file(content: bytes | Callable[[bytes], bytes]):
    """Replace the feature-set file with ``content`` (bytes, or a function of the old bytes)."""

    def make(root: Path, canary: Path):
        path = _st_path(root)
        old = path.read_bytes()
        path.write_bytes(content(old) if callable(content) else content)
        return _open(root)

    return make


def header_text(text: str | bytes, data: bytes = b"\0" * 160, header_len: int | None = None):
    """A file whose header is ``text`` (the length field says ``header_len``, default its size)."""
    body = text.encode() if isinstance(text, str) else text
    length = len(body) if header_len is None else header_len
    return raw_file(struct.pack("<Q", length) + body + data)


def header_edit(fn: Callable[[dict], None], data_delta: int = 0):
    """Rewrite the valid header as ``fn`` changes it (compact JSON, new length), the data kept
    (plus ``data_delta`` bytes: > 0 appends zeros, < 0 cuts the end)."""

    def content(old: bytes) -> bytes:
        (n,) = struct.unpack("<Q", old[:8])
        header = json.loads(old[8 : 8 + n])
        fn(header)
        body = json.dumps(header, separators=(",", ":")).encode()
        data = old[8 + n :]
        data = data + b"\0" * data_delta if data_delta >= 0 else data[:data_delta]
        return struct.pack("<Q", len(body)) + body + data

    return raw_file(content)


def tensor_field(name: str, field: str, value):
    return header_edit(lambda h: h[name].__setitem__(field, value))


def manifest_edit(fn: Callable[[dict, dict], None]):
    """Change the manifest: ``fn(entry_of_KEY, whole_manifest)``."""

    def make(root: Path, canary: Path):
        path = root / "featstore.json"
        obj = json.loads(path.read_text())
        fn(obj["feature_sets"][KEY], obj)
        path.write_text(json.dumps(obj))
        return _open(root)

    return make


def manifest_raw(content: bytes):
    def make(root: Path, canary: Path):
        (root / "featstore.json").write_bytes(content)
        return _open(root)

    return make


def entry_set(**fields):
    return manifest_edit(lambda e, o: e.update(fields))


def checksum_set(**fields):
    return manifest_edit(lambda e, o: e["checksum"].update(fields))


def member(kind: str):
    """The feature-set path becomes something else: a folder, a FIFO, a symlink loop or a link out of the root."""

    def make(root: Path, canary: Path):
        path = _st_path(root)
        path.unlink()
        if kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "loop":
            path.symlink_to(path)
        elif kind == "link out":
            outside = root.parent / "outside.safetensors"
            outside.write_bytes(b"\0" * 64)
            path.symlink_to(outside)
        elif kind == "dir link out":
            shutil.rmtree(root / "enc")
            (root.parent / "elsewhere").mkdir(exist_ok=True)
            (root / "enc").symlink_to(root.parent / "elsewhere")
        return _open(root)

    return make


def manifest_member(kind: str):
    def make(root: Path, canary: Path):
        path = root / "featstore.json"
        path.unlink()
        if kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "huge":  # sparse: costs no disk, must cost no memory either
            with open(path, "wb") as f:
                f.truncate(200_000_000)
        return _open(root)

    return make


# ---- .pt files --------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs os.mkdir(canary) (or ``fn(*args)``): the canary appears if pickled code ever
    runs. Not open(): the tests' no-rewrite audit wraps io.open, which pickle then refuses to name."""

    def __init__(self, canary: str, fn=os.mkdir, args=None):
        self.canary, self.fn, self.args = canary, fn, args

    def __reduce__(self):
        return (self.fn, self.args or (self.canary,))


def _torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _patch_pickle(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Replace bytes inside the archive's data.pkl (same length) and fix its CRC-32 in the zip."""
    assert len(old) == len(new)
    z = zipfile.ZipFile(io.BytesIO(raw))
    info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    pk = z.read(info)
    assert old in pk, (old, pk)
    new_pk = pk.replace(old, new, 1)
    out = raw.replace(pk, new_pk, 1)
    return out.replace(struct.pack("<I", info.CRC), struct.pack("<I", zlib.crc32(new_pk)))


def _patch_record_size(raw: bytes, suffix: str, size: int) -> bytes:
    """Make the zip's local and central headers declare ``size`` bytes for the record ``suffix``."""
    info = next(i for i in zipfile.ZipFile(io.BytesIO(raw)).infolist() if i.filename.endswith(suffix))
    old = struct.pack("<I", info.compress_size) + struct.pack("<I", info.file_size)
    assert old in raw
    return raw.replace(old, struct.pack("<I", size) * 2)


_FORGE_BASE = {"features": torch.zeros(3, 70000, dtype=torch.uint8)}


def pt_file(content: Callable[[Path], bytes]):
    """Write ``content(canary)`` as bad.pt and import it."""

    def make(root: Path, canary: Path):
        path = root.parent / "bad.pt"
        path.write_bytes(content(canary))
        return lambda: FeatureStore.open(root).import_pt(path, "imported/x")

    return make


def pt_saved(obj_fn: Callable[[Path], object]):
    return pt_file(lambda canary: _torch_save_bytes(obj_fn(canary)))


def _torchscript(canary: Path) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _traced(canary: Path) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(torch.nn.ReLU(), torch.zeros(2)), buf)
    return buf.getvalue()


def _i32(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


PT_FILE = r"bad\.pt"
_HEADER_OK = '{"features":{"dtype":"F16","shape":[10,4],"data_offsets":[0,80]},"labels":{"dtype":"I64","shape":[10],"data_offsets":[80,160]}}'


def _hdr(features: str, labels: str = '{"dtype":"I64","shape":[10],"data_offsets":[80,160]}') -> str:
    return '{"features":' + features + ',"labels":' + labels + "}"


# name -> (make, error, file regex, field regex)
_CASES: dict[str, tuple] = {
    # -- files under 8 bytes, and header lengths that cannot be
    "empty file": (raw_file(b""), CorruptFileError, ST_FILE, "too short"),
    "1 byte": (raw_file(b"\x01"), CorruptFileError, ST_FILE, "too short"),
    "7 bytes": (raw_file(b"\x10\0\0\0\0\0\0"), CorruptFileError, ST_FILE, "too short"),
    "8 bytes, header length 0": (raw_file(struct.pack("<Q", 0)), CorruptFileError, ST_FILE, "header"),
    "header length 2**64-1": (raw_file(lambda o: b"\xff" * 8 + o[8:]), CorruptFileError, ST_FILE, "header length"),
    "header length 2**63": (
        raw_file(lambda o: struct.pack("<Q", 1 << 63) + o[8:]),
        CorruptFileError,
        ST_FILE,
        "header length",
    ),
    "header length over the cap": (
        raw_file(lambda o: struct.pack("<Q", 100_000_001) + o[8:]),
        CorruptFileError,
        ST_FILE,
        "header length",
    ),
    "header length = file size": (
        raw_file(lambda o: struct.pack("<Q", len(o)) + o[8:]),
        CorruptFileError,
        ST_FILE,
        "header length",
    ),
    "header length 1 MB in a small file": (
        raw_file(lambda o: struct.pack("<Q", 10**6) + o[8:]),
        CorruptFileError,
        ST_FILE,
        "header length",
    ),
    "header length cuts the JSON": (
        raw_file(lambda o: struct.pack("<Q", 40) + o[8:]),
        CorruptFileError,
        ST_FILE,
        "header",
    ),
    # -- header bytes that are not UTF-8 / not JSON / not an object
    "header invalid UTF-8 byte": (header_text(b'{"\xff":1}'), CorruptFileError, ST_FILE, "UTF-8"),
    "header overlong UTF-8": (header_text(b'{"\xc0\xaf":1}'), CorruptFileError, ST_FILE, "UTF-8"),
    "header UTF-16 surrogate": (header_text(b'{"\xed\xa0\x80":1}'), CorruptFileError, ST_FILE, "UTF-8"),
    "header not JSON": (header_text("{nope"), CorruptFileError, ST_FILE, "header is not valid JSON"),
    "header JSON array": (header_text("[1, 2]"), CorruptFileError, ST_FILE, "header"),
    "header trailing garbage": (header_text(_HEADER_OK + " }"), CorruptFileError, ST_FILE, "header is not valid JSON"),
    "header nested 100000 deep": (
        header_text('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"),
        CorruptFileError,
        ST_FILE,
        "header nests",
    ),
    "header integer with 5000 digits": (
        header_text(_hdr('{"dtype":"F16","shape":[' + "9" * 5000 + '],"data_offsets":[0,80]}')),
        CorruptFileError,
        ST_FILE,
        "header is not valid JSON",
    ),
    "header NaN in shape": (
        header_text(_hdr('{"dtype":"F16","shape":[NaN],"data_offsets":[0,80]}')),
        CorruptFileError,
        ST_FILE,
        "'shape'",
    ),
    "tensor entry not an object": (
        header_edit(lambda h: h.__setitem__("features", [1])),
        CorruptFileError,
        ST_FILE,
        "'features' is not a JSON object",
    ),
    # -- duplicate keys
    "duplicate tensor name": (
        header_text('{"features":{},' + _HEADER_OK[1:]),
        CorruptFileError,
        ST_FILE,
        "'features' twice",
    ),
    "duplicate dtype key": (
        header_text(_hdr('{"dtype":"F16","dtype":"F32","shape":[10,4],"data_offsets":[0,80]}')),
        CorruptFileError,
        ST_FILE,
        "'dtype' twice",
    ),
    "duplicate metadata key": (
        header_text('{"__metadata__":{"a":"1","a":"2"},' + _HEADER_OK[1:]),
        CorruptFileError,
        ST_FILE,
        "'a' twice",
    ),
    # -- dtypes
    "unknown dtype": (tensor_field("features", "dtype", "Q9"), CorruptFileError, ST_FILE, "unknown dtype"),
    "safetensors dtype featstore does not read": (
        tensor_field("features", "dtype", "F8_E5M2"),
        CorruptFileError,
        ST_FILE,
        "unknown dtype",
    ),
    "dtype missing": (header_edit(lambda h: h["features"].pop("dtype")), CorruptFileError, ST_FILE, "unknown dtype"),
    "dtype is a list": (tensor_field("features", "dtype", ["F16"]), CorruptFileError, ST_FILE, "unknown dtype"),
    "dtype is an object": (tensor_field("labels", "dtype", {"a": 1}), CorruptFileError, ST_FILE, "unknown dtype"),
    # -- shapes
    "shape not a list": (tensor_field("features", "shape", "10x4"), CorruptFileError, ST_FILE, "'shape'"),
    "shape negative": (tensor_field("features", "shape", [-10, -4]), CorruptFileError, ST_FILE, "'shape'"),
    "shape of booleans": (tensor_field("features", "shape", [True, 4]), CorruptFileError, ST_FILE, "'shape'"),
    "shape of floats": (tensor_field("features", "shape", [10.0, 4]), CorruptFileError, ST_FILE, "'shape'"),
    "shape product overflows int64": (
        header_edit(lambda h: h["features"].update(shape=[2**32, 2**32, 16], data_offsets=[0, 0])),
        CorruptFileError,
        ST_FILE,
        "'shape'",
    ),
    "shape product wraps to the real size": (
        header_edit(lambda h: h["features"].update(shape=[2**63 + 40, 1])),
        CorruptFileError,
        ST_FILE,
        "'shape'",
    ),
    "shape of 4000 huge dims": (
        header_edit(lambda h: h["features"].update(shape=[2**40] * 4_000)),
        CorruptFileError,
        ST_FILE,
        "'shape'",
    ),
    "shape disagrees with offsets": (
        tensor_field("features", "shape", [10, 5]),
        CorruptFileError,
        ST_FILE,
        "'data_offsets' span",
    ),
    # -- offsets
    "offsets missing": (
        header_edit(lambda h: h["features"].pop("data_offsets")),
        CorruptFileError,
        ST_FILE,
        "'data_offsets'",
    ),
    "offsets one number": (tensor_field("features", "data_offsets", [80]), CorruptFileError, ST_FILE, "'data_offsets'"),
    "offsets negative": (
        tensor_field("features", "data_offsets", [-80, 0]),
        CorruptFileError,
        ST_FILE,
        "'data_offsets'",
    ),
    "offsets reversed": (
        tensor_field("features", "data_offsets", [80, 0]),
        CorruptFileError,
        ST_FILE,
        "'data_offsets' begin",
    ),
    "offsets overlap": (
        header_edit(lambda h: h["labels"].update(data_offsets=[40, 120])),
        CorruptFileError,
        ST_FILE,
        "overlaps",
    ),
    "offsets leave a gap": (
        header_edit(lambda h: h["labels"].update(data_offsets=[88, 168]), data_delta=8),
        CorruptFileError,
        ST_FILE,
        "gap",
    ),
    "offsets past the end of the file": (
        header_edit(lambda h: h["labels"].update(data_offsets=[80, 2**40], shape=[(2**40 - 80) // 8])),
        CorruptFileError,
        ST_FILE,
        "truncated",
    ),
    "offsets start past 2**64": (
        header_edit(lambda h: h["labels"].update(data_offsets=[2**64, 2**64 + 80])),
        CorruptFileError,
        ST_FILE,
        "gap",
    ),
    # -- data section size
    "data truncated by 1 byte": (raw_file(lambda o: o[:-1]), CorruptFileError, ST_FILE, "truncated"),
    "data missing entirely": (
        raw_file(lambda o: o[: 8 + struct.unpack("<Q", o[:8])[0]]),
        CorruptFileError,
        ST_FILE,
        "truncated",
    ),
    "trailing bytes": (raw_file(lambda o: o + b"xx"), CorruptFileError, ST_FILE, "trailing bytes"),
    "1 MB of trailing bytes": (raw_file(lambda o: o + b"\0" * (1 << 20)), CorruptFileError, ST_FILE, "trailing bytes"),
    # -- metadata
    "metadata not an object": (
        header_edit(lambda h: h.__setitem__("__metadata__", ["x"])),
        CorruptFileError,
        ST_FILE,
        "__metadata__",
    ),
    "metadata value not a string": (
        header_edit(lambda h: h["__metadata__"].__setitem__("format", 1)),
        CorruptFileError,
        ST_FILE,
        "__metadata__",
    ),
    # -- a valid file that is not what the manifest says
    "header lacks labels": (header_edit(lambda h: h.pop("labels"), data_delta=-80), FormatError, ST_FILE, "'labels'"),
    "header has an extra tensor": (
        header_edit(
            lambda h: h.__setitem__("extra", {"dtype": "U8", "shape": [1], "data_offsets": [160, 161]}), data_delta=1
        ),
        FormatError,
        ST_FILE,
        "extra",
    ),
    "header dtype differs from manifest": (
        header_edit(lambda h: h["features"].update(dtype="I16")),
        FormatError,
        ST_FILE,
        "dtype",
    ),
    "header edited, checksum mismatch": (
        header_edit(lambda h: h["__metadata__"].update({"featstore.key": "enc/other"})),
        CorruptFileError,
        ST_FILE,
        "header checksum",
    ),
    # -- the feature-set path is not a plain file inside the root
    "file missing": (member("missing"), FormatError, ST_FILE, "missing"),
    "file is a folder": (member("folder"), FormatError, ST_FILE, "folder"),
    "file is a FIFO": (member("fifo"), FormatError, ST_FILE, "not a regular file"),
    "file is a symlink loop": (member("loop"), FormatError, ST_FILE, "cannot be resolved"),
    "file is a symlink out of the root": (member("link out"), FormatError, ST_FILE, "outside the store root"),
    "folder is a symlink out of the root": (member("dir link out"), FormatError, ST_FILE, "outside the store root"),
    # -- the manifest
    "manifest missing": (manifest_member("missing"), FormatError, MANIFEST, "does not exist"),
    "manifest is a folder": (manifest_member("folder"), FormatError, MANIFEST, "folder"),
    "manifest is a FIFO": (manifest_member("fifo"), FormatError, MANIFEST, "not a regular file"),
    "manifest of 200 MB": (manifest_member("huge"), CorruptFileError, MANIFEST, "larger than any manifest"),
    "manifest empty": (manifest_raw(b""), CorruptFileError, MANIFEST, "manifest is not valid JSON"),
    "manifest not UTF-8": (manifest_raw(b'{"format": "\xff"}'), CorruptFileError, MANIFEST, "UTF-8"),
    "manifest not JSON": (
        manifest_raw(b'{"format": featstore}'),
        CorruptFileError,
        MANIFEST,
        "manifest is not valid JSON",
    ),
    "manifest nested 100000 deep": (manifest_raw(b"[" * 100_000 + b"]" * 100_000), CorruptFileError, MANIFEST, "nests"),
    "manifest integer with 5000 digits": (
        manifest_raw(b'{"format_version": ' + b"7" * 5000 + b"}"),
        CorruptFileError,
        MANIFEST,
        "manifest is not valid JSON",
    ),
    "manifest duplicate key": (
        manifest_raw(b'{"format": "featstore", "format": "featstore"}'),
        CorruptFileError,
        MANIFEST,
        "'format' twice",
    ),
    "manifest is a list": (manifest_raw(b"[]"), FormatError, MANIFEST, "'format'"),
    "manifest format wrong": (
        manifest_edit(lambda e, o: o.update(format="safetensors")),
        FormatError,
        MANIFEST,
        "'format'",
    ),
    "format_version a string": (
        manifest_edit(lambda e, o: o.update(format_version="1")),
        FormatError,
        MANIFEST,
        "'format_version'",
    ),
    "format_version newer": (
        manifest_edit(lambda e, o: o.update(format_version=4)),
        FormatVersionError,
        MANIFEST,
        "format version",
    ),
    "feature_sets a list": (
        manifest_edit(lambda e, o: o.update(feature_sets=[])),
        FormatError,
        MANIFEST,
        "'feature_sets'",
    ),
    "feature-set key with ..": (
        manifest_edit(lambda e, o: o["feature_sets"].__setitem__("../x", e)),
        FormatError,
        MANIFEST,
        "key",
    ),
    "entry not an object": (
        manifest_edit(lambda e, o: o["feature_sets"].__setitem__(KEY, 3)),
        FormatError,
        MANIFEST,
        "not a JSON object",
    ),
    "file ../x": (entry_set(file="../x.safetensors"), FormatError, MANIFEST, "'file'.*leaves the store root"),
    "file absolute": (entry_set(file="/etc/passwd"), FormatError, MANIFEST, "'file'.*leaves the store root"),
    "file with a backslash": (
        entry_set(file="..\\x.safetensors"),
        FormatError,
        MANIFEST,
        "'file'.*leaves the store root",
    ),
    "file a/../../x": (
        entry_set(file="enc/../../x.safetensors"),
        FormatError,
        MANIFEST,
        "'file'.*leaves the store root",
    ),
    "file empty": (entry_set(file=""), FormatError, MANIFEST, "'file'"),
    "file a number": (entry_set(file=7), FormatError, MANIFEST, "'file'"),
    "file names another set's file": (
        manifest_edit(lambda e, o: o["feature_sets"].__setitem__("enc/copy", dict(e))),
        FormatError,
        MANIFEST,
        "same file",
    ),
    "dtype unknown": (entry_set(dtype="float128"), FormatError, MANIFEST, "'dtype'"),
    "shape empty": (entry_set(shape=[]), FormatError, MANIFEST, "'shape'"),
    "shape negative rows": (entry_set(shape=[-10, 4]), FormatError, MANIFEST, "'shape'"),
    "shape product overflows": (entry_set(shape=[2**40, 2**40]), FormatError, MANIFEST, "'shape'"),
    "wrong size: more rows than the file": (
        entry_set(
            shape=[11, 4],
            committed=[[0, 11]],
            rows_committed=11,
            checksum={"algorithm": "crc32", "block_rows": 524288, "blocks": [0], "labels": 0, "header": 0},
        ),
        FormatError,
        ST_FILE,
        "shape",
    ),
    "wrong size: wider rows than the file": (entry_set(shape=[10, 8]), FormatError, ST_FILE, "shape"),
    "wrong dtype": (entry_set(dtype="float32"), FormatError, ST_FILE, "dtype"),
    "labels flag not a bool": (entry_set(labels="yes"), FormatError, MANIFEST, "'labels'"),
    "committed beyond the rows": (entry_set(committed=[[0, 99]]), FormatError, MANIFEST, "'committed'"),
    "committed overlapping": (entry_set(committed=[[0, 6], [4, 10]]), FormatError, MANIFEST, "'committed'"),
    "complete but rows missing": (entry_set(committed=[[0, 5]], rows_committed=5), FormatError, MANIFEST, "complete"),
    "checksum not an object": (entry_set(checksum=[1]), FormatError, MANIFEST, "'checksum'"),
    "checksum block_rows 0": (checksum_set(block_rows=0), FormatError, MANIFEST, "block_rows"),
    "checksum blocks too few": (checksum_set(blocks=[]), FormatError, MANIFEST, "blocks"),
    "checksum header a string": (checksum_set(header="abc"), FormatError, MANIFEST, "checksum.header"),
    "created_at a string": (entry_set(created_at="yesterday"), FormatError, MANIFEST, "'created_at'"),
    "created_at 1e308": (entry_set(created_at=1e308), FormatError, MANIFEST, "'created_at'"),
    "created_at an int of 400 digits": (entry_set(created_at=10**400), FormatError, MANIFEST, "'created_at'"),
    "finished_at a list": (entry_set(finished_at=[1]), FormatError, MANIFEST, "'finished_at'"),
    "metadata a list": (entry_set(metadata=[1]), FormatError, MANIFEST, "'metadata'"),
    # -- .pt files: code, TorchScript, forged sizes, junk
    "pt plain pickle with code": (
        pt_file(lambda c: pickle.dumps({"features": _Evil(str(c))})),
        CorruptFileError,
        PT_FILE,
        "weights-only",
    ),
    "pt torch.save with code in metadata": (
        pt_saved(lambda c: {"features": torch.zeros(2, 2), "metadata": _Evil(str(c))}),
        CorruptFileError,
        PT_FILE,
        "weights-only",
    ),
    "pt pickle calling os.system": (
        pt_saved(lambda c: {"features": _Evil(str(c), os.system, (f"touch {c}",))}),
        CorruptFileError,
        PT_FILE,
        "weights-only",
    ),
    "pt pickle calling eval": (
        pt_saved(lambda c: {"features": _Evil(str(c), eval, (f"open({str(c)!r}, 'w')",))}),
        CorruptFileError,
        PT_FILE,
        "weights-only",
    ),
    "pt TorchScript module": (pt_file(_torchscript), CorruptFileError, PT_FILE, "TorchScript"),
    "pt TorchScript traced module": (pt_file(_traced), CorruptFileError, PT_FILE, "TorchScript"),
    "pt shape larger than its storage": (
        pt_file(
            lambda c: _patch_pickle(_torch_save_bytes(_FORGE_BASE), b"K\x03" + _i32(70000), b"K\x03" + _i32(2**31 - 1))
        ),
        CorruptFileError,
        PT_FILE,
        "storage",
    ),
    "pt storage declared smaller than the shape": (
        pt_file(lambda c: _patch_pickle(_torch_save_bytes(_FORGE_BASE), _i32(210000), _i32(1000))),
        CorruptFileError,
        PT_FILE,
        "storage",
    ),
    "pt zip record declares 2 GB": (
        pt_file(lambda c: _patch_record_size(_torch_save_bytes(_FORGE_BASE), "data/0", 2**31)),
        CorruptFileError,
        PT_FILE,
        "zip archive",
    ),
    "pt zip pickle record declares 2 GB": (
        pt_file(lambda c: _patch_record_size(_torch_save_bytes(_FORGE_BASE), "data.pkl", 2**31)),
        CorruptFileError,
        PT_FILE,
        "zip archive",
    ),
    "pt broadcast view of 2**40 rows": (
        pt_saved(lambda c: {"features": torch.zeros(4).as_strided((2**40, 4), (0, 1))}),
        FormatError,
        PT_FILE,
        "'features'.*storage",
    ),
    "pt truncated archive": (
        pt_file(lambda c: _torch_save_bytes(_FORGE_BASE)[:5000]),
        CorruptFileError,
        PT_FILE,
        "weights-only",
    ),
    "pt empty file": (pt_file(lambda c: b""), CorruptFileError, PT_FILE, "weights-only"),
    "pt not a zip": (pt_file(lambda c: b"PK\x03\x04 not really a zip"), CorruptFileError, PT_FILE, "weights-only"),
    "pt features a 0-d tensor": (
        pt_saved(lambda c: {"features": torch.tensor(1.0)}),
        FormatError,
        PT_FILE,
        "'features'",
    ),
}

CASES = [Case(name, *spec) for name, spec in _CASES.items()]
