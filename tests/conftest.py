"""Shared test setup: single-threaded torch, a `backend` fixture over both implementations, and the
no-rewrite audit around every test (tests/_rewrite_audit.py)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(params=["core", "numpy"])
def backend(request):
    """Runs the test once per implementation ("core", "numpy"); yields the name.

    featstore._backend dispatches to it for the duration of the test. "core" is skipped if the
    compiled module can't be imported.
    """
    from featstore import _backend

    if request.param not in _backend.available():
        pytest.skip(f"backend {request.param!r} is not available")
    with _backend.use(request.param):
        yield request.param


@pytest.fixture(scope="module")
def hub_offline():
    """The Hugging Face hub is offline for the whole module (tests load only local folders)."""
    from _encoder_models import offline_hub

    with offline_hub():
        yield


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory, hub_offline):
    """A tiny random-init DINOv2 saved with save_pretrained, shared by a test module."""
    from _encoder_models import make_dinov2

    return make_dinov2(tmp_path_factory.mktemp("dinov2"))


def pytest_configure(config):
    config.addinivalue_line("markers", "damages_store: the test damages finished files on purpose (no read-only check)")


_audit_totals: dict = {}


def pytest_terminal_summary(terminalreporter):
    audit = _audit_totals.get("audit")
    if audit is not None:
        terminalreporter.write_line(
            f"no-rewrite audit: {_audit_totals.get('tests', 0)} tests, {audit.calls_checked} featstore file writes "
            f"checked, {_audit_totals.get('violations', 0)} violations"
        )


@pytest.fixture(scope="session")
def rewrite_audit():
    """Installed once for the whole run (so module-scoped fixtures are audited too); see tests/_rewrite_audit.py."""
    from _rewrite_audit import RewriteAudit

    audit = RewriteAudit().install()
    _audit_totals["audit"] = audit
    yield audit
    audit.uninstall()


@pytest.fixture(autouse=True)
def no_rewrite(request, rewrite_audit):
    """Fails the test if featstore rewrote committed data during it (or its fixtures), or left a
    finished file under its tmp_path writable."""
    check_modes = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("damages_store")
    folder = request.getfixturevalue("tmp_path") if check_modes else None
    yield rewrite_audit
    from _rewrite_audit import writable_finished_files

    problems, rewrite_audit.violations = rewrite_audit.violations, []
    if folder is not None:
        problems = problems + writable_finished_files(folder)
    _audit_totals["tests"] = _audit_totals.get("tests", 0) + 1
    _audit_totals["violations"] = _audit_totals.get("violations", 0) + len(problems)
    if problems:
        pytest.fail("committed data was rewritten or left writable:\n  " + "\n  ".join(problems[:20]), pytrace=False)
