"""``orbitmesh console``: the address of the live globe, with the token in its fragment.

The token rides in the URL's fragment (``#token=…``), which browsers never
send to a server or put in logs; the page moves it to the tab's session
storage and removes it from the address bar.  Reads need no token; the page's
chaos, tasks and time control do.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from urllib.parse import quote


def console_url(api: str, token: str | None) -> str:
    base = api.rstrip("/") + "/"
    return base + (f"#token={quote(token, safe='')}" if token else "")


def cmd_console(args: argparse.Namespace) -> int:
    from agent.serve.auth import client_token
    from agent.ops.fleet import FleetError, load_peers
    try:
        token = client_token(args.dir)
        if args.url:
            api = args.url
        else:
            peers = load_peers(args.dir)
            if args.node not in peers:
                print(f"error: no node {args.node!r} in {args.dir}/peers.json", file=sys.stderr)
                return 1
            api = peers[args.node].api
    except (FleetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    url = console_url(api, token)
    print(url)
    if token is None:
        print("no API token found ($ORBITMESH_TOKEN, or the fleet's token file): the page will show the fleet, "
              "but its chaos, tasks and time control will ask for one", file=sys.stderr)
    if args.open and not webbrowser.open(url):
        print("could not start a browser here: open the address above", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="the address of the live globe (with the token), or --open it")
    p.add_argument("--node", default="sat-0", help="the node whose page to open (default: sat-0)")
    p.add_argument("--url", help="an agent's API URL (compose, swarm, Kubernetes) instead of --node")
    p.add_argument("--open", action="store_true", help="also open it in the default browser")
    p.set_defaults(func=cmd_console)
