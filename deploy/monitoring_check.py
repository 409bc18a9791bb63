"""The compose monitoring profile, checked for real: Prometheus scrapes every node.

Waits (bounded) until Prometheus lists every node as a target that is up, and
until a query over what it scraped sees every node's membership view.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.load(r)["data"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, required=True, help="targets expected (satellites + ground stations)")
    ap.add_argument("--url", default="http://127.0.0.1:9090")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    deadline, up, last = time.time() + args.timeout, [], "no answer"
    query = urllib.parse.urlencode({"query": 'count(orbitmesh_members{status="alive"})'})
    while time.time() < deadline:
        try:
            targets = get(args.url, "/api/v1/targets")["activeTargets"]
            up = sorted(t["labels"]["instance"] for t in targets if t["health"] == "up")
            result = get(args.url, "/api/v1/query?" + query)["result"]
            seen = int(float(result[0]["value"][1])) if result else 0
            if len(targets) == len(up) == seen == args.nodes:
                print(f"prometheus: {len(up)}/{args.nodes} targets up; {seen} nodes' membership views scraped")
                return 0
            last = f"{len(up)}/{len(targets)} targets up, {seen} views scraped"
        except (OSError, ValueError, KeyError, IndexError) as exc:
            last = f"not answering yet: {exc}"
        time.sleep(2)
    print(f"prometheus after {args.timeout:.0f} s: {last}; up: {up}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
