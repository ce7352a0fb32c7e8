"""`ladle demo --quick` end to end, as a user runs it in a log file: the report, the plots, where the time went,
and plain progress lines instead of carriage returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def test_the_quick_demo_writes_its_report_and_says_where_the_time_went(tmp_path):
    env = {**os.environ, "LADLE_PROGRESS": "1"}
    done = subprocess.run([str(VENV_BIN / "ladle"), "demo", "--quick", "--out", str(tmp_path / "demo")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = tmp_path / "demo" / "report"
    for name in ("report.md", "greedy.png", "interpolation.png", "accuracy.png", "corruptions.png", "severity.png",
                 "results.json", "corruptions-summary.csv"):
        assert (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    phases = results["seconds_by_phase"]
    assert {"training", "corruption", "evaluation", "mixing"} <= set(phases) and all(v >= 0 for v in phases.values())
    assert abs(sum(phases.values()) / 60 - results["minutes"]) < 0.05
    time_line = next(line for line in done.stdout.splitlines() if line.startswith("time: "))
    assert "training" in time_line and "evaluation" in time_line
    assert "\r" not in done.stderr  # a log gets plain lines, not a redrawn bar
