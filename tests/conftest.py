"""Shared test setup: single-threaded torch, and a `backend` fixture over both implementations."""

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
