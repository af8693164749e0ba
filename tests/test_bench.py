"""The benchmark cannot rot: its smoke mode runs every section on tiny settings (figures unchecked: no timing is
asserted anywhere), and the README shows the committed full results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown_for_every_section(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT, timeout=900,
                       capture_output=True, text=True, env={**os.environ, "JOB_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["smoke"] and results["machine"]["torch"].startswith("2.14.1")
    sections = {row["section"] for row in results["rows"]}
    assert sections == {"loop", "search", "space", "orchestration", "storage"}
    assert all(row["job"] > 0 for row in results["rows"])
    table = (tmp_path / "results.md").read_text()
    assert "SMOKE RUN" in table and table.count("\n| ") == len(results["rows"]) + 1


@pytest.mark.slow
def test_the_opt_in_scale_section_runs_on_tiny_settings(tmp_path):
    before = set((ROOT / "runs").glob("*"))
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "scale", "--out", str(tmp_path)], cwd=ROOT,
                       timeout=900, capture_output=True, text=True, env={**os.environ, "JOB_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {row["section"] for row in rows} == {"scale"} and all(row["job"] > 0 for row in rows)
    cache = next(row for row in rows if row["measure"].startswith("cache on disk"))
    assert cache["ratio"] == pytest.approx(1.0, abs=0.01)  # the cache is exactly images x side² x 3 bytes
    assert set((ROOT / "runs").glob("*")) == before  # its runs stay in its own folder, not where it was started


def test_readme_shows_the_committed_full_results():
    committed = json.loads((ROOT / "bench" / "results.json").read_text())
    assert not committed["smoke"] and committed["repeats"] >= 3
    assert (ROOT / "bench" / "results.md").read_text() in (ROOT / "README.md").read_text()
