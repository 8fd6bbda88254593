#!/usr/bin/env python3
"""Prints every query of the Grafana dashboard as a Prometheus recording rule,
so that `promtool check rules` parses each one (packaging/lint.sh), after
checking the dashboard's shape: unique panel ids, each panel on the
dashboard's Prometheus data source variable and within the 24-column grid."""
import json
import sys


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def main(path):
    dash = json.load(open(path))
    errors, ids, rules = [], set(), []
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    for p in panels(dash["panels"]):
        pid = p.get("id")
        if pid in ids:
            errors.append(f"panel id {pid} is used twice")
        ids.add(pid)
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            errors.append(f"panel {pid} ({p.get('title')}) is wider than the grid")
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid", "").strip("${}") not in variables:
            errors.append(f"panel {pid} ({p.get('title')}) does not use the data source variable")
        if not p.get("targets"):
            errors.append(f"panel {pid} ({p.get('title')}) has no query")
        for t in p.get("targets", []):
            rules.append({"record": f"dashboard:panel_{pid}:{t['refId']}", "expr": t["expr"]})
    if errors:
        sys.exit("grafana-dashboard.json: " + "; ".join(errors))
    # JSON is YAML: promtool reads this as a rules file.
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout, indent=1)


main(sys.argv[1])
