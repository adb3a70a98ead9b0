#!/usr/bin/env python3
"""Offline checks of the Grafana dashboards the chart ships: the JSON model's required
fields, unique panel ids, non-overlapping grid positions, every query on the
${datasource} variable and every $variable defined, and every PromQL expression parsed
by promtool (as recording rules, with the dashboard variables substituted).

Usage: check-dashboards.py DASHBOARD.json...
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BUILTIN = {"__rate_interval", "__interval", "__range", "__all"}
SUBST = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def check(path: Path) -> list[str]:
    problems: list[str] = []
    board = json.loads(path.read_text())
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in board:
            problems.append(f"missing {key}")
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    exprs: list[tuple[str, str]] = []
    for panel in board.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"panel {title!r}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        g = panel.get("gridPos") or {}
        if not {"h", "w", "x", "y"} <= g.keys() or g["x"] + g["w"] > 24:
            problems.append(f"panel {title!r}: bad gridPos {g}")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"panel {title!r} overlaps another at {x},{y}")
                    break
                cells.add((x, y))
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {title!r}: datasource is not ${{datasource}}")
        if not panel.get("targets"):
            problems.append(f"panel {title!r}: no queries")
        for t in panel.get("targets", []):
            expr = t.get("expr", "")
            if not expr:
                problems.append(f"panel {title!r}: empty query {t.get('refId')}")
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
                if name not in variables and name not in BUILTIN:
                    problems.append(f"panel {title!r}: undefined variable ${name}")
            exprs.append((f"{title} {t.get('refId')}", expr))
    # Parse every query with promtool, variables substituted.
    rules = []
    for i, (_, expr) in enumerate(exprs):
        for var, value in SUBST.items():
            expr = expr.replace(var, value)
        expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}, f)
    out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    Path(f.name).unlink()
    if out.returncode:
        problems.append("promtool could not parse a query:\n" + out.stdout + out.stderr)
    print(
        f"{'FAILED' if problems else 'ok':6} {path.name}: {len(ids)} panels, "
        f"{len(exprs)} queries parsed by promtool"
    )
    return problems


def main() -> int:
    failed = False
    for arg in sys.argv[1:]:
        for problem in check(Path(arg)):
            print(f"  {problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
