"""``orbitmesh topo``: the moving mesh as physics predicts it, without running a fleet.

    orbitmesh topo show     [--node NODE] [--at T]          a node's links and latencies at t
    orbitmesh topo path     --src A --dst B --from T0 --to T1 --step S
    orbitmesh topo contacts [--node NODE] [--from T0] [--duration D]

The constellation comes from ``--preset NAME``, ``--tle FILE`` or ``--config
FILE``.  Nodes are ``sat-N``, ``gs-NAME``, a ground station's name (the
config's or a built-in city) or ``lat,lon[,alt_km]`` (write ``--src=-33.9,18.4``
when it starts with a minus sign, or argparse takes it for an option).  Times are seconds
after the epoch, an ISO-8601 UTC time, or ``now`` (the config's clock).
``--json`` prints one JSON object per line.  This module is the I/O shell:
it reads files and the wall clock, and hands text and times to ``mesh``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.config import HANDOVER_POLICIES, ConfigError, FleetConfig, parse_config
from mesh.ground import GroundStation, parse_station
from mesh.orbit import iso_to_jd
from mesh.presets import PRESETS, from_tle, preset
from mesh.tle import TleError

if TYPE_CHECKING:
    from mesh.world import World


class TopoError(Exception):
    """A user error: printed as ``error: …`` with exit status 2."""


# -- argument handling -------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help=f"constellation preset ({', '.join(PRESETS)}; default: demo)")
    src.add_argument("--tle", type=Path, help="TLE file (2- or 3-line element sets)")
    src.add_argument("--config", type=Path, help="fleet config (TOML), e.g. .fleet/config.toml")
    p.add_argument("--epoch", help="ISO-8601 epoch (t = 0); default: the preset's, or the TLE set's")
    p.add_argument("--station", action="append", default=[], metavar="NAME|LAT,LON[,ALT]",
                   help="add a ground station (repeatable)")
    p.add_argument("--mask", type=float, help="elevation mask in degrees (default: the config's, 25)")
    p.add_argument("--handover", choices=HANDOVER_POLICIES, help="ground-link policy (default: the config's)")
    p.add_argument("--max-range", type=float, help="laser terminal reach in km")
    p.add_argument("--ground-range", type=float, metavar="KM",
                   help="longest ground link in km (Hypatia's form of the mask; default: the config's, none)")
    p.add_argument("--inter-shell", type=int, metavar="N",
                   help="inter-shell laser terminals per satellite, 0–4 (default: the config's)")
    p.add_argument("--relays", action="store_true", help="let paths pass through ground stations")
    p.add_argument("--json", action="store_true", help="JSON lines")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``topo`` and its subcommands to an ``add_subparsers()`` object."""
    topo = subparsers.add_parser("topo", help="links, paths and contact windows predicted from orbital physics",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = topo.add_subparsers(dest="topo_command", required=True)

    p = sub.add_parser("show", help="a node's links and latencies at t (or a summary of the mesh)")
    _common(p)
    p.add_argument("--node", help="sat-N, gs-NAME, a station name or lat,lon (default: a mesh summary)")
    p.add_argument("--at", default="0", help="time: seconds after the epoch, ISO-8601, or now (default 0)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("path", help="lowest-latency path between two nodes, step by step")
    _common(p)
    p.add_argument("--src", default="sat-0", help="sat-N, gs-NAME, a station name or lat,lon (default: sat-0)")
    p.add_argument("--dst", default=None,
                   help="sat-N, gs-NAME, a station name or lat,lon (default: the last satellite, in the last "
                        "shell of a multi-shell preset: a path across shells)")
    p.add_argument("--from", dest="t_from", default="0", help="first step (default 0)")
    p.add_argument("--to", dest="t_to", default=None, help="last step (default: --from + 600 s)")
    p.add_argument("--step", type=float, default=10.0, help="seconds between steps (default 10)")
    p.set_defaults(func=cmd_path)

    p = sub.add_parser("contacts", help="predicted up-windows of every link (or one node's)")
    _common(p)
    p.add_argument("--node", help="only links of this node")
    p.add_argument("--from", dest="t_from", default="0", help="start of the plan (default 0)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds covered (default 600)")
    p.add_argument("--sample", type=float, default=10.0, help="sampling step in s (default 10)")
    p.add_argument("--tol", type=float, default=0.1, help="window edges refined to this many s (default 0.1)")
    p.add_argument("--kind", choices=("all", "laser", "ground"), default="all")
    p.set_defaults(func=cmd_contacts)
    return topo


def load_config(args: argparse.Namespace) -> FleetConfig:
    """The config the flags name, with their overrides applied."""
    try:
        if args.tle is not None:
            cfg = from_tle(args.tle.read_text(), name=args.tle.stem, file=str(args.tle), epoch=args.epoch)
        elif args.config is not None:
            base = args.config.parent
            cfg = parse_config(args.config.read_text(), read_file=lambda p: (base / p).read_text())
        else:
            cfg = preset(args.preset or "demo")
    except OSError as exc:
        raise TopoError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ConfigError, TleError, KeyError) as exc:
        raise TopoError(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from None
    if args.epoch and args.tle is None:
        try:
            iso_to_jd(args.epoch)
        except ValueError:
            raise TopoError(f"--epoch: not an ISO-8601 time: {args.epoch!r}") from None
        cfg = replace(cfg, epoch=args.epoch)
    ground = cfg.ground
    if args.mask is not None:
        if not 0 <= args.mask < 90:
            raise TopoError("--mask: must be in [0, 90) degrees")
        ground = replace(ground, elevation_mask_deg=args.mask)
    if args.handover is not None:
        ground = replace(ground, handover=args.handover)
    if args.ground_range is not None:
        if not args.ground_range > 0:
            raise TopoError("--ground-range: must be > 0 km")
        ground = replace(ground, max_range_km=args.ground_range)
    if args.relays:
        ground = replace(ground, relays=True)
    if args.station:
        have = {s.name for s in ground.stations}
        extra = [s for s in (_station(spec) for spec in args.station) if s.name not in have]
        ground = replace(ground, stations=ground.stations + tuple(extra))
    links = cfg.links
    if args.max_range is not None:
        if not args.max_range > 0:
            raise TopoError("--max-range: must be > 0 km")
        links = replace(links, max_range_km=args.max_range)
    if args.inter_shell is not None:
        if not 0 <= args.inter_shell <= 4:
            raise TopoError("--inter-shell: must be within 0–4 terminals")
        links = replace(links, inter_shell_links=args.inter_shell)
    return replace(cfg, ground=ground, links=links)


def _station(spec: str) -> GroundStation:
    try:
        return parse_station(spec)
    except (KeyError, ValueError) as exc:
        raise TopoError(str(exc.args[0])) from None


def build_world(cfg: FleetConfig, endpoints: list[str]) -> "World":
    """The world, with any endpoint that is a station not in the config added to it."""
    from mesh.world import World

    have = {s.name for s in cfg.ground.stations}
    extra = []
    for spec in endpoints:
        if spec.startswith(("sat-", "gs-")) or spec in have:
            continue
        st = _station(spec)
        if st.name not in have:
            extra.append(st)
            have.add(st.name)
    return World.from_config(cfg, extra_stations=tuple(extra))


def resolve_node(world: "World", spec: str) -> int:
    names = world.names
    try:
        if spec.startswith(("sat-", "gs-")):
            return names.index(spec)
        if spec in names.stations:
            return names.index("gs-" + spec)
        return names.index("gs-" + _station(spec).name)
    except KeyError as exc:
        raise TopoError(f"{exc.args[0]} (satellites are sat-0 … sat-{names.n_sats - 1})") from None


def parse_time(cfg: FleetConfig, spec: str, wall: float | None = None) -> float:
    """Seconds after the epoch from seconds, an ISO-8601 time, or ``now``."""
    s = spec.strip()
    if s == "now":
        return cfg.clock.orbit_t(time.time() if wall is None else wall)
    try:
        v = float(s)
    except ValueError:
        try:
            return (iso_to_jd(s) - cfg.epoch_jd) * 86400.0
        except ValueError:
            raise TopoError(f"time {spec!r}: give seconds after the epoch, an ISO-8601 time, or now") from None
    if not math.isfinite(v):
        raise TopoError(f"time {spec!r} is not finite")
    return v


def _iso(cfg: FleetConfig, t: float) -> str:
    """UTC time of orbital ``t``, to the millisecond (datetime arithmetic: no JD rounding)."""
    from datetime import datetime, timedelta, timezone
    epoch = datetime.fromisoformat(cfg.epoch.replace("Z", "+00:00"))
    if epoch.tzinfo is None:
        epoch = epoch.replace(tzinfo=timezone.utc)
    when = (epoch + timedelta(seconds=t)).astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _run(args: argparse.Namespace, body) -> int:
    try:
        return body()
    except TopoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:            # e.g. SGP4 failing far from a TLE epoch
        print(f"error: {exc}", file=sys.stderr)
        return 1


# -- show ----------------------------------------------------------------------------

def show_data(world: "World", node: int | None, t: float) -> dict[str, Any]:
    """What ``topo show`` prints, as plain data."""
    from mesh.ground import ecef_to_latlon
    from mesh.sun import constellation_sunlit, eclipse_fractions
    topo, names, cfg = world.topology, world.names, world.config
    snap = topo.snapshot(t)
    out: dict[str, Any] = {"t": t, "time": _iso(cfg, t)}
    if node is None:
        lit = constellation_sunlit(world.constellation, t)
        out.update({
            "constellation": cfg.name, "satellites": names.n_sats, "stations": len(names.stations),
            "laser_links_up": int(len(snap.pairs)), "laser_links_possible": int(len(topo.candidates)),
            "inter_shell_links": int(len(topo.inter_shell_at(t))),
            "ground_links_up": int(len(snap.ground_pairs)), "sunlit": int(lit.sum()),
            "in_shadow": int((~lit).sum()), "handover": topo.handover, "elevation_mask_deg": topo.elevation_mask_deg,
            "shells": [{"name": s.name, "kind": s.kind, "planes": s.planes, "satellites": s.size,
                        "altitude_km": s.altitude_km, "inclination_deg": s.inclination_deg}
                       for s in world.constellation.shells],
        })
        return out
    out["node"] = names.name(node)
    if names.is_ground(node):
        view = topo.ground_view(node, t)
        st = view.station
        linked = set(view.linked)
        out.update({
            "station": {"name": st.name, "lat_deg": st.lat_deg, "lon_deg": st.lon_deg, "alt_km": st.alt_km},
            "elevation_mask_deg": topo.elevation_mask_deg, "handover": view.policy,
            "serving": None if view.serving is None else names.name(view.serving),
            "slot": list(view.slot),
            "visible": [{"node": names.name(v.sat), "elevation_deg": v.elevation_deg, "azimuth_deg": v.azimuth_deg,
                         "range_km": v.range_km, "latency_ms": v.latency_s * 1e3, "linked": v.sat in linked}
                        for v in view.visible],
        })
        return out
    c = world.constellation
    p = snap.positions[node]
    lat, lon, alt = ecef_to_latlon(p)
    shell = c.shells[c.shell_of[node]]
    up = dict(snap.neighbours(node))
    links = []
    inter = topo.inter_shell_at(t)
    across = sorted(int(x) for x in inter[(inter[:, 0] == node) | (inter[:, 1] == node)].ravel() if x != node)
    for kind, partners in (("laser", topo.neighbours_of(node)), ("inter-shell", across)):
        for j in partners:
            d = float(((snap.positions[j] - p) ** 2).sum() ** 0.5)
            links.append({"node": names.name(j), "kind": kind, "up": j in up, "range_km": d,
                          "latency_ms": topo.link_latency(node, j, t) * 1e3})
    for j in sorted(x for x in up if names.is_ground(x)):
        links.append({"node": names.name(j), "kind": "ground", "up": True,
                      "range_km": float(((snap.positions[j] - p) ** 2).sum() ** 0.5),
                      "latency_ms": topo.link_latency(node, j, t) * 1e3})
    lit = bool(constellation_sunlit(c, t)[node])
    out.update({
        "label": c.labels[node], "shell": shell.name, "plane": c.plane_of[node], "slot": c.slot_of[node],
        "lat_deg": lat, "lon_deg": lon, "alt_km": alt, "sunlit": lit,
        "eclipse_fraction": float(eclipse_fractions(c, t, indices=[node], samples=720)[0]),
        "period_s": float(c.period_s[node]), "links": links,
    })
    return out


def cmd_show(args: argparse.Namespace) -> int:
    def body() -> int:
        cfg = load_config(args)
        world = build_world(cfg, [args.node] if args.node else [])
        node = resolve_node(world, args.node) if args.node else None
        t = parse_time(cfg, args.at)
        data = show_data(world, node, t)
        if args.json:
            print(json.dumps(data))
            return 0
        print(format_show(data))
        return 0
    return _run(args, body)


def format_show(d: dict[str, Any]) -> str:
    head = f"t = {d['t']:.1f} s ({d['time']})"
    if "node" not in d:
        lines = [f"{d['constellation']}: {d['satellites']} satellites, {d['stations']} ground stations   {head}"]
        for s in d["shells"]:
            lines.append(f"  shell {s['name']:<8} {s['kind']:<9} {s['planes']:>3} planes  {s['satellites']:>5} sats  "
                         f"{s['altitude_km']:.0f} km  {s['inclination_deg']:.2f}°")
        lines.append(f"  laser links up {d['laser_links_up']}/{d['laser_links_possible'] + d['inter_shell_links']} "
                     f"({d['inter_shell_links']} inter-shell chosen)   ground links up "
                     f"{d['ground_links_up']} (mask {d['elevation_mask_deg']:g}°, handover {d['handover']})   "
                     f"sunlit {d['sunlit']}, in Earth's shadow {d['in_shadow']}")
        return "\n".join(lines)
    if "station" in d:
        st = d["station"]
        lines = [f"{d['node']}  ({st['lat_deg']:.4f}°, {st['lon_deg']:.4f}°, {st['alt_km']:.3f} km)   {head}",
                 f"  mask {d['elevation_mask_deg']:g}°   handover {d['handover']}   serving "
                 f"{d['serving'] or '—'} (slot {d['slot'][0]:.0f}–{d['slot'][1]:.0f} s)"]
        if not d["visible"]:
            lines.append("  no satellite above the mask")
        else:
            lines.append(f"  {'satellite':<11} {'elev °':>7} {'az °':>7} {'range km':>9} {'latency ms':>11}  link")
            for v in d["visible"]:
                lines.append(f"  {v['node']:<11} {v['elevation_deg']:>7.2f} {v['azimuth_deg']:>7.2f} "
                             f"{v['range_km']:>9.1f} {v['latency_ms']:>11.3f}  {'up' if v['linked'] else '-'}")
        return "\n".join(lines)
    lines = [f"{d['node']} ({d['label']}, shell {d['shell']} plane {d['plane']} slot {d['slot']})   {head}",
             f"  lat {d['lat_deg']:.2f}°  lon {d['lon_deg']:.2f}°  alt {d['alt_km']:.1f} km   "
             f"{'sunlit' if d['sunlit'] else 'in shadow'}; {d['eclipse_fraction'] * 100:.1f}% of this orbit "
             f"({d['period_s'] / 60:.1f} min) in eclipse",
             f"  {'link':<16} {'kind':<11} {'state':<6} {'range km':>9} {'latency ms':>11}"]
    for ln in d["links"]:
        lines.append(f"  {ln['node']:<16} {ln['kind']:<11} {'up' if ln['up'] else 'down':<6} "
                     f"{ln['range_km']:>9.1f} {ln['latency_ms']:>11.3f}")
    return "\n".join(lines)


# -- path ------------------------------------------------------------------------------

def path_steps(world: "World", src: int, dst: int, t0: float, t1: float, step: float):
    """(t, one-way latency s or None, path) per step; the latency sums links exact at t."""
    if not step > 0:
        raise TopoError("--step must be > 0")
    if t1 < t0:
        raise TopoError("--to must not be before --from")
    n = int(math.floor((t1 - t0) / step + 1e-9))
    for j in range(n + 1):
        t = t0 + j * step
        found = world.topology.snapshot(t).shortest_path(src, dst)
        yield (t, None, []) if found is None else (t, found[1], found[0])


def cmd_path(args: argparse.Namespace) -> int:
    def body() -> int:
        cfg = load_config(args)
        dst_spec = args.dst or f"sat-{cfg.size - 1}"
        world = build_world(cfg, [args.src, dst_spec])
        src, dst = resolve_node(world, args.src), resolve_node(world, dst_spec)
        t0 = parse_time(cfg, args.t_from)
        t1 = t0 + 600.0 if args.t_to is None else parse_time(cfg, args.t_to)
        names = world.names
        if not args.json:
            print(f"{names.name(src)} → {names.name(dst)}   {cfg.name}, mask {world.topology.elevation_mask_deg:g}°, "
                  f"handover {world.topology.handover}   (* = path changed)")
            print(f"{'t s':>10} {'RTT ms':>9} {'hops':>5}  path")
        prev: list[int] | None = None
        changes = unreachable = 0
        for t, one_way, path in path_steps(world, src, dst, t0, t1, args.step):
            changed = prev is not None and path != prev
            changes += changed
            unreachable += not path
            prev = path
            if args.json:
                print(json.dumps({"t": t, "time": _iso(cfg, t), "rtt_ms": None if one_way is None else 2e3 * one_way,
                                  "one_way_ms": None if one_way is None else 1e3 * one_way,
                                  "hops": len(path) - 1 if path else None,
                                  "path": [names.name(i) for i in path], "changed": changed}))
            elif not path:
                print(f"{t:>10.1f} {'—':>9} {'—':>5}{' *' if changed else '  '} unreachable")
            else:
                print(f"{t:>10.1f} {2e3 * one_way:>9.3f} {len(path) - 1:>5}{' *' if changed else '  '} "
                      + " ".join(names.name(i) for i in path))
        if not args.json:
            print(f"{changes} path change(s); {unreachable} step(s) unreachable")
        return 0
    return _run(args, body)


# -- contacts --------------------------------------------------------------------------

def cmd_contacts(args: argparse.Namespace) -> int:
    def body() -> int:
        cfg = load_config(args)
        world = build_world(cfg, [args.node] if args.node else [])
        node = resolve_node(world, args.node) if args.node else None
        t0 = parse_time(cfg, args.t_from)
        if not args.duration > 0 or not args.sample > 0 or not args.tol > 0:
            raise TopoError("--duration, --sample and --tol must be > 0")
        from mesh.contacts import contact_plan
        plan = contact_plan(world.topology, t0, args.duration, step_s=args.sample, tol_s=args.tol,
                            nodes=None if node is None else [node])
        names = world.names
        rows = [c for c in plan.contacts if args.kind in ("all", c.kind) and (node is None or node in (c.a, c.b))]
        if not args.json:
            print(f"contact plan {plan.t0:.1f}–{plan.t1:.1f} s ({_iso(cfg, plan.t0)} + {args.duration:g} s), "
                  f"edges to ±{args.tol:g} s; < = open at the start, > = still open at the end")
            print(f"{'link':<32} {'kind':<7} {'start s':>10} {'end s':>10} {'duration s':>11}")
        for c in rows:
            a, b = names.name(c.a), names.name(c.b)
            if args.json:
                print(json.dumps({"a": a, "b": b, "kind": c.kind, "start": c.start, "end": c.end,
                                  "open_at_start": c.start <= plan.t0, "open_at_end": c.end >= plan.t1}))
            else:
                print(f"{a + ' – ' + b:<32} {c.kind:<7} {('<' if c.start <= plan.t0 else ' ') + f'{c.start:.1f}':>10} "
                      f"{f'{c.end:.1f}' + ('>' if c.end >= plan.t1 else ' '):>10} {c.duration_s:>11.1f}")
        topo = world.topology
        if node is not None and node >= topo.n_sats and topo.handover != "all":
            n = topo.handovers(node, plan.t0, plan.t1)       # the same count a live station reports
            if args.json:
                print(json.dumps({"node": names.name(node), "handover": topo.handover, "handovers": n,
                                  "from": plan.t0, "to": plan.t1}))
            else:
                print(f"{names.name(node)}: {n} handover(s) under {topo.handover}")
        if not args.json:
            print(f"{len(rows)} window(s)")
        return 0
    return _run(args, body)
