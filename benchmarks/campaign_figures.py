"""Gather the fault campaign's counts (written by tests/test_campaign.py) into benchmarks/results/campaign.json,
the file the Guarantees table of docs/reliability.md quotes.

    BAYESVAE_CAMPAIGN_DIR=/tmp/campaign python -m pytest -q -m "not slow" --durations=0 | tee suite.log
    python benchmarks/campaign_figures.py --dir /tmp/campaign --suite-log suite.log

The suite's wall time is read from pytest's last line ("... passed ... in 512.34s").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=os.environ.get("BAYESVAE_CAMPAIGN_DIR", str(ROOT / "test-artifacts" / "campaign")))
    p.add_argument("--suite-log", help="pytest output of the default suite (for its duration and counts)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "campaign.json"))
    a = p.parse_args()
    counts = {f.stem: json.loads(f.read_text()) for f in sorted(Path(a.dir).glob("*.json"))}
    if not counts:
        raise SystemExit(f"no campaign counts in {a.dir}: run the test suite first")
    result: dict[str, Any] = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} logical CPUs", "campaign": counts}
    if a.suite_log:
        text = Path(a.suite_log).read_text()
        m = re.findall(r"(\d+) passed(?:, (\d+) skipped)?.* in ([\d.]+)s", text)
        if m:
            passed, skipped, seconds = m[-1]
            result["suite"] = {"passed": int(passed), "skipped": int(skipped or 0), "seconds": float(seconds),
                               "minutes": round(float(seconds) / 60, 1), "command": 'pytest -q -m "not slow"'}
        durations = re.findall(r"([\d.]+)s call\s+tests/test_campaign\.py::(\w+)", text)
        result["campaign_test_seconds"] = {name: float(s) for s, name in durations}
        result["campaign_test_seconds_total"] = round(sum(result["campaign_test_seconds"].values()), 2)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
