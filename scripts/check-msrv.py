#!/usr/bin/env python3
"""Checks that the workspace's `rust-version` is true for the locked dependencies.

A fresh toolchain of another version cannot be fetched on our machines, so this checks the
claim the way cargo's resolver would: every package that a build of the workspace compiles
for Linux (normal and build dependencies; dev-dependencies only for tests) declares its own
`rust-version`, and the workspace's must be at least the highest of them.

Usage: scripts/check-msrv.py        exit 0 if true, 1 (naming the packages) if not.
"""
import json
import subprocess
import sys


def version_key(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked",
         "--filter-platform", "x86_64-unknown-linux-gnu"]))
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    declared = {packages[m]["rust_version"] for m in members}
    if len(declared) != 1 or None in declared:
        print(f"check-msrv: the workspace members declare {sorted(map(str, declared))}; "
              "want one rust-version for all", file=sys.stderr)
        return 1
    ours = declared.pop()

    # Everything a `cargo build` of the workspace compiles: members' normal and build
    # dependencies, followed transitively (a dependency's dev-dependencies never build).
    seen, stack = set(), list(members)
    while stack:
        pkg = stack.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for dep in nodes[pkg]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds <= {"dev"}:
                continue
            stack.append(dep["pkg"])

    too_new = sorted(
        ((packages[p]["rust_version"], packages[p]["name"], packages[p]["version"])
         for p in seen - members
         if packages[p].get("rust_version")
         and version_key(packages[p]["rust_version"]) > version_key(ours)),
        key=lambda t: version_key(t[0]), reverse=True)
    if too_new:
        print(f"check-msrv: rust-version = {ours} is false; these locked dependencies "
              "need newer:", file=sys.stderr)
        for need, name, ver in too_new:
            print(f"  {name} {ver} needs {need}", file=sys.stderr)
        return 1
    highest = max((packages[p]["rust_version"] for p in seen - members
                   if packages[p].get("rust_version")), key=version_key)
    print(f"check-msrv: rust-version = {ours} holds ({len(seen) - len(members)} "
          f"dependencies; the highest declares {highest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
