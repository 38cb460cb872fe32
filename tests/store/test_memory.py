"""Opening a store never reads feature data: 10 GB of features cost a few MB of resident memory."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys, psutil, torch
from featstore import FeatureStore
root = sys.argv[1]
proc = psutil.Process()
before = proc.memory_info().rss
store = FeatureStore.open(root)
fs = store.get("big/layer", allow_incomplete=True)
view = fs.to_torch()
row = fs[0:1]
after = proc.memory_info().rss
print(json.dumps({"before": before, "after": after, "nbytes": fs.nbytes}))
"""


def test_opening_10gb_costs_under_50mb(tmp_path):
    from featstore import FeatureStore

    store = FeatureStore.create(tmp_path)
    w = store.create_feature_set("big/layer", 7_000_000, (768,), "float16")  # 10.7 GB, sparse on disk
    import torch

    w.write(0, torch.ones(1, 768, dtype=torch.float16))
    w.commit()
    w.close()
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["nbytes"] >= 10 * 2**30
    assert r["after"] - r["before"] < 50 * 2**20, r
