#!/usr/bin/env python3
"""Writes the licences of the Rust crates compiled into the `loupe` binary.

Walks `cargo metadata`'s resolved graph from the `loupe` package along
normal dependencies only (no build or dev dependencies: nothing of theirs
is in the binary), for this machine's target, and writes one text file: per
crate its name, version, licence expression and repository, then the
licence and notice files the crate ships (LICENSE*, LICENCE*, COPYING*,
NOTICE*, and a `license-file`). `make dist` puts it in `licenses/`.

Usage: python3 scripts/crate_licences.py OUT [--cargo CARGO]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

PREFIXES = ("license", "licence", "copying", "notice", "unlicense")


def host_triple(rustc: str) -> str:
    """The target triple rustc builds for by default."""
    output = subprocess.run([rustc, "-vV"], check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        if line.startswith("host: "):
            return line.removeprefix("host: ").strip()
    sys.exit("crate_licences: `rustc -vV` printed no host line")


def linked_packages(metadata: dict) -> list[dict]:
    """The packages reached from the root along normal dependencies."""
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    packages = {package["id"]: package for package in metadata["packages"]}
    root = metadata["resolve"]["root"]
    seen, todo = set(), [root]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for dep in nodes[current]["deps"]:
            if any(kind["kind"] is None for kind in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    seen.discard(root)
    return sorted((packages[id] for id in seen), key=lambda p: (p["name"], p["version"]))


def licence_files(package: dict) -> list[Path]:
    """The licence and notice files in the package's folder."""
    folder = Path(package["manifest_path"]).parent
    files = {
        path
        for path in folder.iterdir()
        if path.is_file() and path.name.lower().startswith(PREFIXES)
    }
    if package.get("license_file"):
        named = folder / package["license_file"]
        if named.is_file():
            files.add(named)
    return sorted(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cargo", default="cargo")
    parser.add_argument("--rustc", default="rustc")
    args = parser.parse_args()
    command = [
        args.cargo, "metadata", "--format-version", "1", "--locked",
        "--filter-platform", host_triple(args.rustc),
    ]
    metadata = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    packages = linked_packages(metadata)
    parts = [
        "Rust crates compiled into the loupe binary, with their licences.\n"
        f"{len(packages)} crates, from `cargo metadata` (normal dependencies only).\n"
    ]
    for package in packages:
        header = f"{package['name']} {package['version']}"
        parts.append("=" * 78 + f"\n{header}\nLicence: {package.get('license') or 'not stated'}\n")
        if package.get("repository"):
            parts.append(f"Repository: {package['repository']}\n")
        files = licence_files(package)
        if not files:
            parts.append("(the crate ships no licence file)\n")
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"\n--- {path.name} ---\n{text.rstrip()}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts), encoding="utf-8")
    print(f"crate_licences: {len(packages)} crates into {args.out}")


if __name__ == "__main__":
    main()
