"""benchmarks/gpu_check.py and benchmarks/gpu_first_run.sh handle their own failures (simulated on
the CPU): no GPU, a stage that raises, the kernel path unsupported, a step that times out, and no
``datasets``/``dill``/``multiprocess`` installed (as on the GPU machines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

# Blocks the packages the GPU machines lack, as if they were not installed.
BLOCK = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("datasets", "dill", "multiprocess"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
"""


def test_a_stage_that_raises_is_recorded_and_the_json_is_written_after_every_stage(tmp_path):
    seen = {}

    def first(ctx):
        return {"value": 1}

    def second(ctx):
        seen["json"] = json.loads((tmp_path / "gc.json").read_text())  # written after the first stage
        raise ValueError("simulated crash")

    def third(ctx):
        return {"status": "not available", "note": "absent"}

    result = gpu_check.run_stages([("a", first), ("b", second), ("c", third)], {}, {"stages": {}}, tmp_path, "gc")
    assert seen["json"]["stages"]["a"]["result"] == {"value": 1} and "b" not in seen["json"]["stages"]
    saved = json.loads((tmp_path / "gc.json").read_text())["stages"]
    assert saved["b"]["status"] == "crashed" and "ValueError: simulated crash" in saved["b"]["traceback"]
    assert saved["c"]["status"] == "not available"  # the stages after a crash still run
    assert gpu_check.exit_status(result["stages"], allow_skip=False) == 5
    md = (tmp_path / "gc.md").read_text()
    assert "| b     | crashed" in md and "simulated crash" in md


def test_exit_status_order():
    def stages(*statuses):
        return {str(i): {"status": s} for i, s in enumerate(statuses)}

    assert gpu_check.exit_status(stages("ok", "not available"), False) == 0
    assert gpu_check.exit_status(stages("ok", "skipped"), False) == 4
    assert gpu_check.exit_status(stages("ok", "skipped"), True) == 0
    assert gpu_check.exit_status(stages("skipped", "crashed"), True) == 5
    assert gpu_check.exit_status(stages("crashed", "inexact"), False) == 1


@pytest.fixture()
def simulated_gpu(monkeypatch):
    """gpu_check's exactness stage on the CPU: batches "served" by the CPU gather (or a wrong one)."""
    import featstore.batches.cuda as fcuda

    monkeypatch.setattr(gpu_check, "ensure_gpu_and_module", lambda no_install: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setitem(sys.modules, "gpu_check_quant", None)  # its real stage needs a real GPU: "not available"
    wrong: set[str] = set()

    def one_batch(fs, idx, path):
        x = fs.gather(idx)
        if path in wrong:
            x = x.clone()
            x.view(-1)[0] += 1
        return x, fs.labels[idx], torch.from_numpy(idx)

    monkeypatch.setattr(gpu_check, "one_batch", one_batch)
    return fcuda, wrong


def run_main(tmp_path, *extra):
    return gpu_check.main(
        ["--quick", "--no-install", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path), *extra],
        stages=[("exactness", gpu_check.stage_exactness), ("quant", gpu_check.stage_quant)],
    )


def test_uva_unsupported_is_a_loud_non_zero_skip(tmp_path, simulated_gpu, monkeypatch, capsys):
    fcuda, _ = simulated_gpu
    monkeypatch.setattr(fcuda, "uva_support", lambda device, mod=None: (False, "simulated: no kernel path"))
    assert run_main(tmp_path) == 4
    assert "kernel and UVA checks will be SKIPPED: simulated" in capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "gpu_check-quick.json").read_text())
    ex = saved["stages"]["exactness"]
    assert ex["status"] == "skipped" and ex["result"]["skipped"] == ["uva", "kernel"]
    assert ex["result"]["exact"] == ex["result"]["checks"] > 0 and saved["exit_status"] == 4
    assert run_main(tmp_path, "--allow-skip") == 0


def test_an_inexact_path_exits_1(tmp_path, simulated_gpu, monkeypatch):
    fcuda, wrong = simulated_gpu
    monkeypatch.setattr(fcuda, "uva_support", lambda device, mod=None: (True, ""))
    assert run_main(tmp_path) == 0  # every path (the kernel too) exact
    wrong.add("pinned")
    assert run_main(tmp_path) == 1
    ex = json.loads((tmp_path / "out" / "gpu_check-quick.json").read_text())["stages"]["exactness"]["result"]
    assert ex["failures"] and {f["path"] for f in ex["failures"]} == {"pinned"}


def test_the_quant_stage_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpu_check_quant", None)  # as if benchmarks/gpu_check_quant.py were absent
    assert gpu_check.stage_quant({})["status"] == "not available"
    fake = types.ModuleType("gpu_check_quant")
    fake.run_stage = lambda: {"exact": True}
    monkeypatch.setitem(sys.modules, "gpu_check_quant", fake)
    assert gpu_check.stage_quant({}) == {"exact": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_the_quant_stage_skips_without_a_gpu_and_reports_in_the_stage_shape(tmp_path):
    import gpu_check_quant

    result = gpu_check.stage_quant({})
    assert result["status"] == "skipped" and "no CUDA GPU" in result["note"]
    stages = [("quant", gpu_check.stage_quant)]
    out = gpu_check.run_stages(stages, {}, {}, tmp_path, "q")
    assert out["stages"]["quant"]["status"] == "skipped" and "no CUDA GPU" in out["stages"]["quant"]["note"]
    checks = [{"check": "every code", "scheme": "int8", "dtype": "float16", "exact": True}] * 3
    speed = {"uva_int8_over_float16": 1.8, "device_int8_over_float16": 0.9}
    ok = gpu_check_quant.summarise(checks, speed)
    assert ok["status"] == "ok" and ok["note"] == (
        "3/3 exact; uva int8->f16 1.80x the f16 kernel, device cache int8 0.90x f16 index_select"
    )
    bad = gpu_check_quant.summarise([*checks, {**checks[0], "exact": False}], None)
    assert bad["status"] == "inexact" and bad["failures"] == [{**checks[0], "exact": False}] and bad["exact"] == 3


def test_without_datasets_the_cuda_code_tests_and_check_import_and_run(tmp_path):
    """Finding 8: what the GPU machines run needs no datasets, dill or multiprocess."""
    code = BLOCK + (
        "import featstore, featstore.batches.cuda, featstore.batches.device_assemblers, pytest\n"
        f"rc = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', {str(ROOT / 'tests' / 'batches')!r}])\n"
        "assert rc == 0, rc\n"
        "import runpy, torch\n"
        "if torch.cuda.is_available(): sys.exit(0)  # the check itself runs in gpu_first_run.sh there\n"
        f"sys.argv = ['gpu_check.py', '--no-install', '--out', {str(tmp_path / 'out')!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if torch.cuda.is_available():
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no CUDA GPU" in done.stderr and not (tmp_path / "out").exists()


def first_run(out, env) -> subprocess.CompletedProcess:
    """benchmarks/gpu_first_run.sh OUT with ``env`` (a fake python on PATH), at most 60 s."""
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_first_run.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU timeout")
def test_first_run_script_times_out_a_step_and_keeps_the_others(tmp_path):
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        "  *gpu_register_probe*) sleep 30 ;;\n"
        '  *benchmarks/gpu_check.py*) echo "fake check $*"; exit 5 ;;\n'
        '  *) echo "fake python $*" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), T_PROBE="1", FIRST_RUN_BUDGET_S="60")
    t0 = time.monotonic()
    done = first_run(tmp_path / "out", env)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 1, done.stdout + done.stderr
    steps = [line.split("\t") for line in (tmp_path / "out" / "steps.tsv").read_text().splitlines()[1:]]
    status = {name: rc for name, rc, *_ in steps}
    assert status == {"facts": "0", "build": "0", "attributes": "0", "probe": "124", "tests": "0", "gpu_check": "5"}
    assert "TIMED OUT" in (tmp_path / "out" / "probe.log").read_text()
    build = (tmp_path / "out" / "build.log").read_text()
    assert "pip install --no-index --no-build-isolation --no-deps" in build
    assert "fake check" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU timeout")
def test_first_run_script_stops_starting_steps_when_its_budget_is_spent(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 3\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), FIRST_RUN_BUDGET_S="6")
    done = first_run(tmp_path / "out", env)
    assert done.returncode == 1
    text = (tmp_path / "out" / "steps.tsv").read_text()
    assert "gpu_check\tnot run (budget spent)" in text
