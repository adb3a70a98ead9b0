#!/usr/bin/env python3
"""promtool over the chart's alert rules: renders the PrometheusRule (rules on), writes
its groups as a plain rules file, runs `promtool check rules` and `promtool test rules`
on every test file, and fails if an alert has no test.

Usage: prometheus-rules.py --helm HELM --tests deploy/prometheus/tests
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "kloop"
# The rules file the tests name in `rule_files` (relative to the tests dir).
RULES = ROOT / "deploy" / ".tools" / "rules" / "kloop.rules.yaml"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm", required=True)
    parser.add_argument("--tests", type=Path, required=True)
    parser.add_argument("--promtool", default="promtool")
    args = parser.parse_args()
    rendered = subprocess.run(
        [
            args.helm,
            "template",
            "kloop",
            str(CHART),
            "--namespace",
            "kloop",
            "--set",
            "monitoring.prometheusRules.enabled=true",
            "--show-only",
            "templates/prometheusrules.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    groups = [g for d in docs for g in d["spec"]["groups"]]
    RULES.parent.mkdir(parents=True, exist_ok=True)
    RULES.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}

    subprocess.run([args.promtool, "check", "rules", str(RULES)], check=True)
    tests = sorted(args.tests.glob("*.yaml"))
    if not tests:
        print(f"no rule tests in {args.tests}", file=sys.stderr)
        return 1
    tested: set[str] = set()
    for test in tests:
        spec = yaml.safe_load(test.read_text())
        for case in spec.get("tests", []):
            for alert_case in case.get("alert_rule_test", []):
                if alert_case.get("exp_alerts"):
                    tested.add(alert_case["alertname"])
    result = subprocess.run([args.promtool, "test", "rules", *map(str, tests)])
    if result.returncode:
        return result.returncode
    untested = sorted(alerts - tested)
    if untested:
        print(f"alerts without a firing test: {', '.join(untested)}", file=sys.stderr)
        return 1
    print(f"promtool: {len(alerts)} alerts, every one tested to fire ({len(tests)} test files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
