#!/usr/bin/env python3
"""Checks a critest JSON report against a list of allowed outcomes.

    check.py REPORT ALLOWED [ONLY]

ALLOWED has lines `STATE<TAB>spec text` (a prefix matches; `#` comments).
With ONLY, specs whose name lacks it are not checked. Prints the counts and
every spec that ended other than passed and is not allowed; exits 1 if
there is one.
"""
import json
import sys

report, allowed_file = sys.argv[1], sys.argv[2]
only = sys.argv[3] if len(sys.argv) > 3 else ""
allowed = []
for line in open(allowed_file):
    if line.strip() and not line.startswith("#"):
        state, text = line.rstrip("\n").split("\t", 1)
        allowed.append((state, text))
r = json.load(open(report))[0]
its = [s for s in r["SpecReports"] if s["LeafNodeType"] == "It"]


def name(s):
    return " ".join(s["ContainerHierarchyTexts"] + [s["LeafNodeText"]])


its = [s for s in its if only in name(s)]
counts, bad = {}, []
for s in its:
    state = s["State"]
    counts[state] = counts.get(state, 0) + 1
    if state == "passed":
        continue
    if not any(state == a and name(s).startswith(t) for a, t in allowed):
        bad.append(f"{state}: {name(s)}")
print("critest: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
for b in bad:
    print("  not allowed: " + b)
print("critest: " + ("ok" if not bad else "FAILED") + f" (report {report})")
sys.exit(1 if bad else 0)
