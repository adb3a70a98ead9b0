#!/usr/bin/env python3
"""checkov on rendered Kubernetes manifests against the committed baseline
(deploy/checkov/skips.yaml): fails on any finding the baseline does not accept with a
reason, on an entry without a reason, and on entries that match nothing any more.

Usage: run-checkov.py --checkov "CMD" --skips deploy/checkov/skips.yaml FILE...
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkov", default="checkov")
    parser.add_argument("--skips", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    skips = yaml.safe_load(args.skips.read_text())["skips"]
    bad = [s.get("id", "?") for s in skips if not str(s.get("reason", "")).strip()]
    if bad:
        print(f"baseline entries without a reason: {bad}", file=sys.stderr)
        return 1
    used: set[int] = set()
    failed = False
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    for path in args.files:
        cmd = [
            *shlex.split(args.checkov),
            "-f",
            str(path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "--quiet",
            "-o",
            "json",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
            reports = json.loads(out.stdout or "[]")
        except json.JSONDecodeError:
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
            return 2
        reports = reports if isinstance(reports, list) else [reports]
        findings = [f for r in reports for f in (r.get("results") or {}).get("failed_checks", [])]
        passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
        if out.returncode not in (0, 1) or (
            reports and "summary" not in reports[0] and not findings
        ):
            print(out.stderr[-2000:], file=sys.stderr)
            return 2
        unaccepted = []
        for f in findings:
            kind, _ns, name = [*f["resource"].split(".", 2), "", ""][:3]
            resource = f"{kind}.{name}"
            match = next(
                (
                    i
                    for i, s in enumerate(skips)
                    if s["id"] == f["check_id"]
                    and (not s.get("resources") or resource in s["resources"])
                ),
                None,
            )
            if match is None:
                unaccepted.append(f"{f['check_id']} {f['check_name']}: {resource}")
            else:
                used.add(match)
        for line in sorted(set(unaccepted)):
            print(f"FAIL  {path.name}: {line}")
        failed = failed or bool(unaccepted)
        print(
            f"{'FAILED' if unaccepted else 'ok':6} {path}: {passed} passed, "
            f"{len(findings) - len(unaccepted)} accepted by the baseline, {len(unaccepted)} not"
        )
    stale = [s["id"] for i, s in enumerate(skips) if i not in used]
    if stale:
        print(f"stale baseline entries (matched nothing): {stale}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
