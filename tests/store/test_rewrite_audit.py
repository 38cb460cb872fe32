"""The no-rewrite audit (tests/_rewrite_audit.py, installed around every test by conftest) catches what it must."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _rewrite_audit import writable_finished_files
from _util import make_store, rows_for

from featstore import FeatureStore


def as_featstore(code: str, **names) -> None:
    """Run ``code`` as if featstore's own code ran it (the audit watches only featstore's calls)."""
    exec(compile(code, "featstore_probe", "exec"), {"__name__": "featstore._probe", "os": os, **names})


@pytest.fixture
def audit(rewrite_audit):
    rewrite_audit.violations.clear()
    yield rewrite_audit
    rewrite_audit.violations.clear()  # the violations below are made on purpose


def half_written(root):
    store = FeatureStore.create(root)
    w = store.create_feature_set("enc/half", 20, (4,), "float16", labels=np.arange(20))
    w.write(0, rows_for(0, 10, (4,)))
    w.commit()
    return w, store.get("enc/half", allow_incomplete=True)


def test_featstore_writes_through_the_audit_without_violations(tmp_path, audit):
    before = audit.calls_checked
    make_store(tmp_path)
    assert audit.calls_checked > before and audit.violations == []


@pytest.mark.parametrize(
    "code, expected",
    [
        ("os.close(os.open(path, os.O_RDWR))", "finished file"),
        ("open(path, 'r+b').close()", "finished file"),
        ("os.truncate(path, 0)", "truncated"),
        ("os.replace(other, path)", "renamed over"),
    ],
)
def test_rewriting_a_finished_file_is_a_violation(tmp_path, audit, code, expected):
    store, _, _ = make_store(tmp_path)
    other = tmp_path / "other"
    other.write_bytes(b"x")
    path = store["enc/layer_1"].path
    mode = path.stat().st_mode
    try:
        as_featstore(code, path=str(path), other=str(other))
    except OSError:
        pass
    finally:
        if path.exists():
            path.chmod(mode)
    assert any(expected in v for v in audit.violations), audit.violations


def test_committed_rows_header_and_labels_are_never_written_again(tmp_path, audit):
    w, fs = half_written(tmp_path)
    start, rb = fs.header.data_start, fs.row_bytes
    as_featstore("os.pwrite(fd, b'\\0' * n, off)", fd=w._fd, n=rb, off=start + 12 * rb)  # row 12: not committed
    assert audit.violations == []
    for offset, what in [(start + 3 * rb, "committed rows 0..10"), (0, "header"), (start + 20 * rb, "labels")]:
        as_featstore("os.pwrite(fd, b'\\0' * n, off)", fd=w._fd, n=rb, off=offset)
        assert any(what in v for v in audit.violations), (what, audit.violations)
    fd = os.open(fs.path, os.O_RDONLY)
    try:
        as_featstore("os.ftruncate(fd, 0)", fd=fd)  # fails (read-only fd), but the attempt is seen
    except OSError:
        pass
    finally:
        os.close(fd)
    assert any("was truncated" in v for v in audit.violations)
    w.close()


def test_manifest_is_never_opened_for_writing(tmp_path, audit):
    make_store(tmp_path)
    as_featstore("open(path, 'a').close()", path=str(tmp_path / "featstore.json"))
    assert any("the manifest" in v for v in audit.violations)


def test_the_tests_own_damage_is_not_audited(tmp_path, audit):
    store, _, _ = make_store(tmp_path)
    path = store["enc/layer_1"].path
    os.close(os.open(path, os.O_RDWR))  # a test, not featstore: allowed
    assert audit.violations == []


def test_finished_files_are_read_only_and_a_writable_one_is_reported(tmp_path):
    store, _, _ = make_store(tmp_path)
    path = store["enc/layer_1"].path
    assert path.stat().st_mode & 0o777 == 0o444
    assert writable_finished_files(tmp_path) == []
    path.chmod(0o644)
    assert writable_finished_files(tmp_path) and "enc/layer_1" in writable_finished_files(tmp_path)[0]
    path.chmod(0o444)
