"""Constellations from two-line element sets: parse, export, group into planes.

mesh does no file I/O: callers pass the TLE *text*.  ``parse_tles`` accepts
2-line and 3-line (title line first) sets and rejects what sgp4 would
silently misread (bad checksums, wrong columns), naming the line.

Grouping heuristic (``group_tles``), so that real or generated TLE sets get
+Grid laser links like a Walker shell:

1. Propagate every satellite to the common epoch and take its osculating
   inclination, RAAN (from the angular-momentum vector) and argument of
   latitude; its altitude from the Kozai mean motion.
2. Shells: sort by inclination and split where neighbouring inclinations
   differ by more than ``shell_inc_gap_deg``; split each of those by
   altitude where it jumps more than ``shell_alt_gap_km``.
3. Planes: within a shell, sort RAANs around the circle and split where
   consecutive RAANs are more than ``plane_gap_deg`` apart (single linkage).
   Plane 0 is the one after the widest gap, so a star constellation's seam
   (its one wide gap, ~180°) falls between the last and first plane.  It is
   a ``star`` when the widest gap exceeds 1.5× the median plane spacing.
4. Slots (the in-plane index +Grid pairs by): the satellites of a plane in
   the order they are listed in the file, when that order follows the
   direction of motion (each next satellite ahead of the last, once round
   the orbit): generated sets (Hypatia's, ``walker_tles``) list each plane
   in generation order, so slot 0 is the plane's first satellite in the
   file.  Otherwise (catalogue order) slot 0 is the first satellite at or
   past the ascending node (within a quarter slot before it counts as at
   it), and slots follow in the direction of motion.
   Cross-plane partners: Hypatia's +Grid, slot s of plane p beside slot
   s + ``isl_shift`` of plane p+1.  Across a delta shell's seam (last plane
   to plane 0) the shift adds the whole slots of phase the planes gather
   round the shell (the Walker phasing F; 0 for Hypatia's shells, whose
   odd planes are offset by half a slot), rounded towards zero on a tie.
   ``laser="closest_phase"`` is the older alternative: slots from the
   ascending node and, per plane pair, the cyclic shift that makes the
   arguments of latitude closest on average (it zig-zags where planes are
   offset by exactly half a slot; kept for sets that were tuned to it).
5. A shell is a grid only if every plane has the same number (≥ 2) of
   satellites; otherwise it is ``irregular`` and its satellites get
   nearest-neighbour laser links chosen at the epoch (``mesh.topology``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import numpy as np
from sgp4.api import WGS72, Satrec, SatrecArray

from mesh.orbit import (EARTH_RADIUS_KM, MU_KM3_S2, TleRecord, TleShell, WalkerShell, _walker_elements)

__all__ = ["TleError", "TleRecord", "TleShell", "parse_tles", "format_tles", "walker_tles",
           "tle_epoch_jd", "group_tles", "tle_checksum", "normalise_tle_text"]


class TleError(ValueError):
    """The TLE text is malformed; the message names the line."""


def tle_checksum(line: str) -> int:
    """Modulo-10 sum of a line's first 68 columns (digits count, '-' counts 1)."""
    return sum(int(ch) if ch.isdigit() else (1 if ch == "-" else 0) for ch in line[:68]) % 10


def _check_line(line: str, no: int, want: str) -> None:
    if len(line) < 69:
        raise TleError(f"line {no}: a TLE line {want} needs 69 columns, this one has {len(line)}")
    if not line.startswith(want + " "):
        raise TleError(f"line {no}: expected TLE line {want}, got {line[:20]!r}")
    if not line[68].isdigit() or int(line[68]) != tle_checksum(line):
        raise TleError(f"line {no}: checksum {line[68]!r} is wrong (expected {tle_checksum(line)})")


def normalise_tle_text(text: str) -> str:
    """One element-set line per line, no trailing blanks or CRs: the form configs store."""
    lines = (ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "".join(ln + "\n" for ln in lines if ln)


_HYPATIA_HEADER = re.compile(r"^\s*\d+\s+\d+\s*$")


def parse_tles(text: str) -> tuple[TleRecord, ...]:
    """Every element set in ``text`` (2- or 3-line format, blank lines ignored)."""
    lines = [(no, ln.rstrip()) for no, ln in enumerate(text.replace("\r\n", "\n").split("\n"), 1)]
    lines = [(no, ln) for no, ln in lines if ln.strip()]
    if lines and _HYPATIA_HEADER.match(lines[0][1]):
        lines = lines[1:]            # Hypatia's tles.txt opens with "<orbits> <satellites per orbit>"
    out: list[TleRecord] = []
    i = 0
    while i < len(lines):
        no, ln = lines[i]
        name = ""
        if not (ln.startswith("1 ") and len(ln) >= 69):
            name = ln[2:].strip() if ln.startswith("0 ") else ln.strip()
            i += 1
            if i >= len(lines):
                raise TleError(f"line {no}: title {name!r} is not followed by TLE lines")
        if i + 1 >= len(lines):
            raise TleError(f"line {lines[i][0]}: TLE line 1 without a line 2")
        (n1, l1), (n2, l2) = lines[i], lines[i + 1]
        _check_line(l1, n1, "1")
        _check_line(l2, n2, "2")
        if l1[2:7] != l2[2:7]:
            raise TleError(f"line {n2}: catalog number {l2[2:7].strip()!r} differs from line 1's {l1[2:7].strip()!r}")
        sat = Satrec.twoline2rv(l1[:69], l2[:69], WGS72)
        if sat.error or not sat.no_kozai > 0:
            raise TleError(f"line {n1}: sgp4 rejects this element set (error {sat.error})")
        out.append(TleRecord(name, l1[:69], l2[:69]))
        i += 2
    if not out:
        raise TleError("no element sets found")
    return tuple(out)


def format_tles(records: tuple[TleRecord, ...] | list[TleRecord]) -> str:
    return "".join((f"{r.name}\n" if r.name else "") + f"{r.line1}\n{r.line2}\n" for r in records)


def tle_epoch_jd(records: tuple[TleRecord, ...] | list[TleRecord]) -> float:
    """The epoch of a TLE set: its newest element set's (older ones are propagated forward)."""
    best = -math.inf
    for r in records:
        s = Satrec.twoline2rv(r.line1, r.line2, WGS72)
        best = max(best, s.jdsatepoch + s.jdsatepochF)
    return best


def _with_checksum(line: str) -> str:
    assert len(line) == 68, (len(line), line)
    return line + str(tle_checksum(line))


def _epoch_field(jd: float) -> str:
    dt = datetime(1970, 1, 1, tzinfo=timezone.utc).timestamp() + (jd - 2440587.5) * 86400.0
    when = datetime.fromtimestamp(dt, timezone.utc)
    start = datetime(when.year, 1, 1, tzinfo=timezone.utc)
    doy = (when - start).total_seconds() / 86400.0 + 1.0
    return f"{when.year % 100:02d}{doy:012.8f}"


def walker_tles(shells: list[WalkerShell] | tuple[WalkerShell, ...], epoch_jd: float, *, first_catalog: int = 1) -> str:
    """Export Walker shells as 3-line TLEs: the same orbits a ``Constellation`` flies.

    Circular and drag-free, like the Walker element sets; mean motion is the
    Kozai value sgp4init is given, so parsing these back reproduces the
    positions to the TLE format's rounding (~10 m).
    """
    lines: list[str] = []
    cat = first_catalog
    epoch = _epoch_field(epoch_jd)
    for shell in shells:
        rev_day = math.sqrt(MU_KM3_S2 / shell.radius_km**3) * 86400.0 / (2 * math.pi)
        for k, (raan, m) in enumerate(_walker_elements(shell)):
            if cat > 99999:
                raise ValueError("more than 99,999 satellites do not fit the TLE catalog field")
            p, s = divmod(k, shell.sats_per_plane)
            lines.append(f"{shell.name.upper()}-P{p}-S{s}")
            lines.append(_with_checksum(
                f"1 {cat:05d}U 26001A   {epoch}  .00000000  00000-0  00000-0 0  999"))
            lines.append(_with_checksum(
                f"2 {cat:05d} {shell.inclination_deg:8.4f} {math.degrees(raan) % 360.0:8.4f} 0000000 "
                f"{0.0:8.4f} {math.degrees(m) % 360.0:8.4f} {rev_day:11.8f}{0:5d}"))
            cat += 1
    return "\n".join(lines) + "\n"


def _elements_at(records: tuple[TleRecord, ...], epoch_jd: float) -> dict[str, np.ndarray]:
    sats = [Satrec.twoline2rv(r.line1, r.line2, WGS72) for r in records]
    whole = math.floor(epoch_jd)
    err, r, v = SatrecArray(sats).sgp4(np.array([float(whole)]), np.array([epoch_jd - whole]))
    if np.any(err):
        bad = int(np.flatnonzero(err[:, 0])[0])
        raise TleError(f"satellite {records[bad].name or records[bad].catalog}: sgp4 fails at the epoch "
                       f"(error {int(err[bad, 0])}; decayed or a far-off epoch?)")
    r, v = r[:, 0, :], v[:, 0, :]
    h = np.cross(r, v)
    hn = np.linalg.norm(h, axis=1)
    inc = np.degrees(np.arccos(np.clip(h[:, 2] / hn, -1, 1)))
    raan = np.degrees(np.arctan2(h[:, 0], -h[:, 1])) % 360.0
    # argument of latitude: angle from the ascending node to the satellite, in the plane
    node = np.stack([np.cos(np.radians(raan)), np.sin(np.radians(raan)), np.zeros(len(raan))], axis=1)
    across = np.cross(h / hn[:, None], node)
    u = np.degrees(np.arctan2(np.einsum("ij,ij->i", r, across), np.einsum("ij,ij->i", r, node))) % 360.0
    n_rad_s = np.array([s.no_kozai for s in sats]) / 60.0
    alt = (MU_KM3_S2 / n_rad_s**2) ** (1.0 / 3.0) - EARTH_RADIUS_KM
    return {"inc": inc, "raan": raan, "u": u, "alt": alt}


def _split_sorted(values: np.ndarray, order: np.ndarray, gap: float) -> list[np.ndarray]:
    """Split ``order`` (indices sorted by value) where consecutive values jump by more than ``gap``."""
    cuts = np.nonzero(np.diff(values[order]) > gap)[0] + 1
    return np.split(order, cuts)


def _circular_clusters(angles: np.ndarray, members: np.ndarray, gap: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Single-linkage clusters of angles on a circle; the first starts after the widest gap.

    Returns the clusters and the gap (degrees) that precedes each one.
    """
    order = members[np.lexsort((members, angles[members]))]
    a = angles[order]
    gaps = np.diff(np.r_[a, a[0] + 360.0])            # gap after element j
    start = (int(np.argmax(gaps)) + 1) % len(order)
    order, gaps = np.roll(order, -start), np.roll(gaps, -start)
    # gaps[j] is now the gap after order[j]; the gap before order[0] is the widest, gaps[-1]
    cuts = np.nonzero(gaps[:-1] > gap)[0] + 1
    clusters = np.split(order, cuts)
    before = np.r_[gaps[-1], gaps[cuts - 1]]
    return clusters, before


GRID_PATTERNS = ("grid", "closest_phase")


def group_tles(records: tuple[TleRecord, ...] | list[TleRecord], epoch_jd: float, *, name: str = "tle",
               plane_gap_deg: float = 1.0, shell_inc_gap_deg: float = 0.5, shell_alt_gap_km: float = 10.0,
               nearest: bool = False, pattern: str = "grid", isl_shift: int = 0) -> list[TleShell]:
    """TLE satellites as shells of planes (see the module docstring for the heuristic).

    ``nearest=True`` skips the grid and makes every shell irregular.
    ``pattern`` is ``grid`` (Hypatia's +Grid, shifted by ``isl_shift``) or
    ``closest_phase``.  Deterministic: the same text and epoch give the same
    shells, order and links.
    """
    if pattern not in GRID_PATTERNS:
        raise ValueError(f"pattern must be one of {GRID_PATTERNS}, not {pattern!r}")
    records = tuple(records)
    el = _elements_at(records, epoch_jd)
    inc, raan, u, alt = el["inc"], el["raan"], el["u"], el["alt"]
    all_idx = np.arange(len(records))
    shells: list[TleShell] = []
    by_inc = _split_sorted(inc, all_idx[np.lexsort((all_idx, inc))], shell_inc_gap_deg)
    groups = []
    for g in by_inc:
        groups += _split_sorted(alt, g[np.lexsort((g, alt[g]))], shell_alt_gap_km)
    for gi, members in enumerate(groups):
        sname = name if len(groups) == 1 else f"{name}{gi}"
        planes, before = _circular_clusters(raan, members, plane_gap_deg)
        sizes = [len(p) for p in planes]
        regular = not nearest and len(set(sizes)) == 1 and sizes[0] >= 2
        kind, shifts = "irregular", ()
        if regular:
            spacing = float(np.median(before)) if len(before) > 1 else 360.0
            kind = "star" if len(planes) > 1 and float(np.max(before)) > 1.5 * spacing else "delta"
            if pattern == "closest_phase":
                planes = [p[np.lexsort((p, u[p]))] for p in planes]
                shifts = tuple(_best_shift(u[planes[p]], u[planes[(p + 1) % len(planes)]])
                               for p in range(len(planes)))
            else:
                planes = [_slot_order(p, u) for p in planes]
                shifts = _grid_shifts(planes, u, isl_shift)
        else:
            planes = [p[np.lexsort((p, u[p]))] for p in planes]
        order = np.concatenate(planes) if regular else members[np.lexsort((members, u[members], raan[members]))]
        if not regular:
            sizes = [len(order)]
        shells.append(TleShell(
            name=sname, records=tuple(records[int(i)] for i in order), plane_sizes=tuple(sizes),
            cross_shift=shifts, kind=kind, altitude_km=round(float(np.mean(alt[members])), 3),
            inclination_deg=round(float(np.mean(inc[members])), 4)))
    return shells


def _best_shift(u_a: np.ndarray, u_b: np.ndarray) -> int:
    """Slot shift k so that slot s of plane a sits beside slot s+k of plane b (smallest mean |Δu|)."""
    s = len(u_a)
    best, best_cost = 0, math.inf
    for k in range(s):
        d = np.abs((np.roll(u_b, -k) - u_a + 180.0) % 360.0 - 180.0)
        cost = float(np.sum(d))
        if cost < best_cost - 1e-9:
            best, best_cost = k, cost
    return best


def _slot_order(plane: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A plane's satellites by slot: file order if it runs with the motion, else from the ascending node."""
    plane = np.sort(plane)                                        # record index = file order
    step = np.diff(np.r_[u[plane], u[plane[0]]]) % 360.0          # each to the next, once round
    if len(plane) > 1 and np.all(step > 0) and abs(float(np.sum(step)) - 360.0) < 1e-6:
        return plane
    lead = 90.0 / len(plane)                                      # a quarter slot before the node
    return plane[np.lexsort((plane, (u[plane] + lead) % 360.0))]


def _grid_shifts(planes: list[np.ndarray], u: np.ndarray, isl_shift: int) -> tuple[int, ...]:
    """+Grid cross-plane shifts: ``isl_shift`` between planes, plus the phase wound up round the seam."""
    n_slots = len(planes[0])
    slot_deg = 360.0 / n_slots
    # phase of each plane's slot 0 relative to the previous plane's, in slots, in [-S/2, S/2)
    steps = [((u[b[0]] - u[a[0]] + 180.0) % 360.0 - 180.0) / slot_deg for a, b in zip(planes, planes[1:])]
    wound = float(np.sum(steps))
    # round to the nearest whole slot; a tie (half a slot, to 1 %) goes towards zero
    seam = int(math.copysign(math.ceil(abs(wound) - 0.5 - 0.01), wound)) if wound else 0
    shifts = [isl_shift % n_slots] * len(planes)
    shifts[-1] = (isl_shift + seam) % n_slots
    return tuple(shifts)
