"""CI-sized runs of the reliability scripts in benchmarks/reliability/ (the long runs are in benchmarks/RELIABILITY.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"


def run_script(name: str, tmp_path: Path, *args: str, timeout: int = 300) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args, "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_crash_stress_20_kills(tmp_path):
    # 20 SIGKILLs of a forked writer at random crash points and random times; every store sound
    figures = run_script("crash_stress", tmp_path, "--writer-kills", "20", "--extract-kills", "0", "--seed", "1",
                         "--workdir", str(tmp_path))
    assert figures["kills"] == 20 and figures["stores_broken"] == 0, figures["writer"]["failures"]
    by_step = figures["writer"]["kills_by_step"]
    assert "time" in by_step and len(by_step) >= 5, by_step
