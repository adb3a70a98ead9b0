#!/usr/bin/env python3
# ruff: noqa: E501  (the generated TypeScript keeps its import paths on one line)
"""Offline checks of the Grafana dashboards the chart ships: the JSON model's required
fields, unique panel ids, non-overlapping grid positions, every query on the
${datasource} variable and every $variable defined, and every PromQL expression parsed
by promtool (as recording rules, with the dashboard variables substituted).

With --schema DIR (scripts/fetch-dashboard-schema.sh installs it): every dashboard is
also type-checked against Grafana's own published schema, the TypeScript types of npm
@grafana/schema: the whole JSON model as `Dashboard` (exact object literals, so an
unknown or misspelt field is an error, as is a wrong type or enum value), and each
timeseries / stat panel's options and custom field config as that panel plugin's
`Options` / `FieldConfig`. `tsc --strict --noEmit` does the checking.

Usage: check-dashboards.py [--schema DIR] DASHBOARD.json...
"""

from __future__ import annotations

import argparse
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


PANEL_TYPES = {
    # panel type -> (options type, custom field config type) in the TypeScript module
    "timeseries": ("TimeSeriesOptions", "TimeSeriesFieldConfig"),
    "stat": ("StatOptions", None),
}
TS_HEADER = """import type { Dashboard as DashboardModel } from '@grafana/schema';
import type {
  Options as TimeSeriesOptionsModel,
  FieldConfig as TimeSeriesFieldConfigModel,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as StatOptionsModel } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
// JSON holds an enum's value ("table"), TypeScript wants the enum member: Json<T> is T
// with every string enum replaced by the union of its values (nothing else loosened).
type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T
  : T extends (infer U)[] ? Json<U>[] : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
type Dashboard = Json<DashboardModel>;
type TimeSeriesOptions = Json<TimeSeriesOptionsModel>;
type TimeSeriesFieldConfig = Json<TimeSeriesFieldConfigModel>;
type StatOptions = Json<StatOptionsModel>;
"""


def schema_check(paths: list[Path], schema_dir: Path) -> list[str]:
    """tsc over one generated module per dashboard; returns tsc's errors."""
    lines = [TS_HEADER]
    for i, path in enumerate(paths):
        board = json.loads(path.read_text())
        lines.append(f"// {path.name}\nexport const board{i}: Dashboard = {json.dumps(board)};")
        for panel in board.get("panels", []):
            types = PANEL_TYPES.get(panel.get("type", ""))
            if panel.get("type") != "row" and types is None:
                lines.append(
                    f"// {path.name}: panel type {panel.get('type')!r} has no typed options here"
                )
                continue
            if types is None:
                continue
            options_type, custom_type = types
            name = f"board{i}_panel{panel['id']}"
            lines.append(
                f"export const {name}_options: {options_type} = {json.dumps(panel.get('options', {}))};"
            )
            custom = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("custom")
            if custom_type and custom is not None:
                lines.append(f"export const {name}_custom: {custom_type} = {json.dumps(custom)};")
    schema_dir = schema_dir.resolve()
    source = schema_dir / "dashboards.check.ts"
    source.write_text("\n".join(lines) + "\n")
    tsc = schema_dir / "node_modules" / ".bin" / "tsc"
    out = subprocess.run(
        [
            str(tsc),
            "--strict",
            "--noEmit",
            "--skipLibCheck",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=schema_dir,
    )
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if out.returncode and not errors:
        errors = [f"tsc exited {out.returncode}"]
    # Name the dashboard of each error (the generated line holds its const name).
    generated = source.read_text().splitlines()
    named = []
    for error in errors:
        m = re.match(r"dashboards\.check\.ts\((\d+),", error)
        where = ""
        if m and 0 < int(m.group(1)) <= len(generated):
            const = re.search(r"export const (\w+)", generated[int(m.group(1)) - 1])
            where = f"[{const.group(1)}] " if const else ""
        named.append(where + error[:400])
    print(
        f"{'FAILED' if named else 'ok':6} Grafana schema (@grafana/schema types, tsc --strict): "
        f"{len(paths)} dashboards"
    )
    return named


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", type=Path, help="dir with typescript + @grafana/schema")
    parser.add_argument("dashboards", nargs="+", type=Path)
    args = parser.parse_args()
    failed = False
    for path in args.dashboards:
        for problem in check(path):
            print(f"  {problem}")
            failed = True
    if args.schema:
        for problem in schema_check(args.dashboards, args.schema):
            print(f"  {problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
