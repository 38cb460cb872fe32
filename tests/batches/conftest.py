"""Fixtures shared by the tests of featstore.batches."""

import pytest
import torch


@pytest.fixture()
def fake_gpu(monkeypatch):
    """torch reports one CUDA device with ``free`` bytes free; nothing is launched (paths are only chosen)."""
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 10 * free["bytes"]))
    return free
