"""Run each package's tests in its own pytest process and add up the results.

Every service keeps its tests in a package named `tests` (relative imports of their
helpers), so one pytest process cannot collect two of them. Usage:
    run_tests.py [pytest args...]      e.g. -m "not slow"
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Packages outside the uv workspace are not installed, so their tests cannot run.
EXCLUDED = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"].get(
        "exclude", []
    )
)
PACKAGES = sorted(
    package
    for p in ROOT.glob("*/*/tests")
    if p.is_dir()
    and (p.parent / "pyproject.toml").exists()
    and (package := p.parent.relative_to(ROOT).as_posix()) not in EXCLUDED
)
# deploy/tests: checks of the deploy artefacts against the running platform (slow).
if (ROOT / "deploy" / "tests").is_dir():
    PACKAGES.append("deploy/tests")


def main(args: list[str]) -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    failing = []
    with tempfile.TemporaryDirectory() as tmp:
        for package in PACKAGES:
            report = Path(tmp) / (package.replace("/", "_") + ".xml")
            print(f"\n===== {package}", flush=True)
            code = subprocess.call(
                [sys.executable, "-m", "pytest", package, f"--junitxml={report}", *args],
                cwd=ROOT,
            )
            # 5: nothing selected (e.g. -m slow in a package without slow tests).
            if code not in (0, 5):
                failing.append(package)
            if report.exists():
                # Our own pytest's report, not untrusted input.
                for suite in ET.parse(report).getroot().iter("testsuite"):  # noqa: S314
                    n = int(suite.get("tests", 0))
                    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
                    skipped = int(suite.get("skipped", 0))
                    totals["failed"] += bad
                    totals["skipped"] += skipped
                    totals["passed"] += n - bad - skipped
    if failing:
        print(f"\nfailing packages: {', '.join(failing)}")
        totals["failed"] = max(totals["failed"], 1)
    print(
        f"\ntests: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['skipped']} skipped"
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
