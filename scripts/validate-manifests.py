#!/usr/bin/env python3
"""Schema-validates rendered manifests for one Kubernetes version.

Core kinds: kubernetes-validate --strict (unknown fields are errors). Custom resources
it has no schema for (ServiceMonitor, PrometheusRule, KEDA ScaledObject, ...) get the
structural checks below; any other kind without a schema fails.

Usage: validate-manifests.py --kubernetes-version 1.29.0 --validator "CMD" FILE...
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


def check_service_monitor(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    problems = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is empty")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("spec.endpoints is empty")
    for i, ep in enumerate(endpoints):
        if not ep.get("port"):
            problems.append(f"spec.endpoints[{i}].port missing")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                problems.append(f"spec.endpoints[{i}].{key} is not a duration")
    return problems


def check_prometheus_rule(doc: dict[str, Any]) -> list[str]:
    problems = []
    for g in (doc.get("spec") or {}).get("groups") or []:
        for r in g.get("rules") or []:
            if not r.get("expr"):
                problems.append(f"group {g.get('name')}: a rule has no expr")
            if bool(r.get("alert")) == bool(r.get("record")):
                problems.append(f"group {g.get('name')}: a rule needs exactly one of alert/record")
            if "for" in r and not DURATION.match(str(r["for"])):
                problems.append(f"rule {r.get('alert')}: for is not a duration")
    return problems


def check_scaled_object(doc: dict[str, Any]) -> list[str]:
    """KEDA ScaledObject: a Deployment target, sane replica bounds, well-formed triggers."""
    spec = doc.get("spec") or {}
    problems = []
    target = spec.get("scaleTargetRef") or {}
    if not target.get("name"):
        problems.append("spec.scaleTargetRef.name missing")
    if target.get("kind", "Deployment") not in ("Deployment", "StatefulSet"):
        problems.append(f"spec.scaleTargetRef.kind {target.get('kind')!r} is not scalable here")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        problems.append(f"replica bounds min={low!r} max={high!r}")
    for key in ("pollingInterval", "cooldownPeriod"):
        if key in spec and not (isinstance(spec[key], int) and spec[key] >= 0):
            problems.append(f"spec.{key} must be a non-negative integer")
    triggers = spec.get("triggers") or []
    if not triggers:
        problems.append("spec.triggers is empty")
    for i, trig in enumerate(triggers):
        meta = trig.get("metadata") or {}
        if not trig.get("type"):
            problems.append(f"spec.triggers[{i}].type missing")
        if any(not isinstance(v, str) for v in meta.values()):
            problems.append(f"spec.triggers[{i}].metadata values must all be strings")
        if trig.get("type") == "redis":
            if not re.match(r"^[^:/\s]+:[0-9]+$", meta.get("address", "")):
                problems.append(f"spec.triggers[{i}].metadata.address is not host:port")
            if not meta.get("listName"):
                problems.append(f"spec.triggers[{i}].metadata.listName missing")
            for key in ("listLength", "activationListLength", "databaseIndex"):
                if key in meta and not str(meta[key]).isdigit():
                    problems.append(f"spec.triggers[{i}].metadata.{key} is not a number")
    return problems


def check_trigger_authentication(doc: dict[str, Any]) -> list[str]:
    refs = (doc.get("spec") or {}).get("secretTargetRef") or []
    if not refs:
        return ["spec.secretTargetRef is empty"]
    return [
        f"spec.secretTargetRef[{i}] needs parameter, name and key"
        for i, ref in enumerate(refs)
        if not all(ref.get(k) for k in ("parameter", "name", "key"))
    ]


CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): check_trigger_authentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--validator", default="kubernetes-validate")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    failed = False
    for path in args.files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        custom = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CUSTOM]
        for doc in custom:
            for problem in CUSTOM[(doc["apiVersion"], doc["kind"])](doc):
                print(f"ERROR {path} {doc['kind']}/{doc['metadata']['name']}: {problem}")
                failed = True
        cmd = [
            *shlex.split(args.validator),
            "--strict",
            "--quiet",
            "-k",
            args.kubernetes_version,
            str(path),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        known = {f"kind {kind} with api version {api}" for api, kind in CUSTOM}
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("WARN") and any(k in line for k in known):
                continue  # checked structurally above
            if line.strip():
                print(line)
                failed = failed or not line.startswith("INFO")
        failed = failed or out.returncode != 0
        status = "FAILED" if failed else "ok"
        print(
            f"{status:6} {path} ({len(docs)} objects, {len(custom)} custom) "
            f"against Kubernetes {args.kubernetes_version}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
