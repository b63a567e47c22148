"""Security properties checked on the code itself: bandit finds nothing, nothing is unpickled or loaded
unsafely (the container's user: tests/test_dockerfile.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from config import ROOT


def test_bandit_finds_nothing_in_api_and_core():
    bandit = Path(sys.executable).with_name("bandit")
    run = subprocess.run([str(bandit), "-q", "-r", "api", "core", "-f", "json"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    report = json.loads(run.stdout)
    assert report["results"] == [], [(r["test_id"], r["filename"], r["line_number"]) for r in report["results"]]


def test_nothing_is_unpickled_or_loaded_with_safe_mode_off():
    risky = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|safe_mode\s*=\s*False|yaml\.load\(|eval\(")
    for path in [*ROOT.glob("api/**/*.py"), *ROOT.glob("core/**/*.py"), ROOT / "app.py"]:
        assert not risky.search(path.read_text()), path

