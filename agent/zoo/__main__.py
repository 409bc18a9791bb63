"""CLI: ``python -m agent.zoo build --out DIR [--only NAME ...] [--force]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import BUILDERS, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.zoo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build zoo models into DIR (skips up-to-date ones)")
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument(
        "--only", action="append", metavar="NAME",
        help=f"build only this model (repeatable); known: {', '.join(sorted(BUILDERS))}",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sub.add_parser("list", help="list known models")
    args = p.parse_args(argv)

    if args.cmd == "list":
        print("\n".join(sorted(BUILDERS)))
        return 0

    only = [n for item in args.only or [] for n in item.split(",") if n]
    unknown = [n for n in only if n not in BUILDERS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {sorted(BUILDERS)}")
    for name in only or list(BUILDERS):
        t0 = time.perf_counter()
        manifest, rebuilt = build(args.out, only=[name], force=args.force)[name]
        dt = time.perf_counter() - t0
        state = f"built in {dt:.2f}s" if rebuilt else "up to date"
        print(
            f"{name}: {state}  held-out accuracy {manifest['accuracy']:.4f}  "
            f"sha256 {manifest['sha256'][:16]}  -> {args.out / manifest['file']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
