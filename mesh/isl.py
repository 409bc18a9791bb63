"""Laser-link patterns: which satellite pairs may carry an inter-satellite link.

Within a shell, +Grid as Hypatia (snkas/hypatia, satgenpy) defines it: each
satellite links to its predecessor and successor in its plane and to the
satellite with the same index in each adjacent plane, shifted by
``isl_shift`` (default 0).  Indices follow the Walker shell's generation
order (plane-major, slot s at mean anomaly s·360°/S + the plane's phase).
Across a Walker delta shell's seam (last plane to plane 0) the shift adds
the phasing F, since that is where a delta shell's phase winds up by F
slots; for F = 0, and for Hypatia's own shells flown from their TLEs, the
seam gets ``isl_shift`` like any other plane pair.  A star shell's
counter-rotating seam gets no links.  TLE shells bring their slot order and
shifts from ``mesh.tle.group_tles``; irregular TLE sets get up to four
nearest neighbours, chosen once at the epoch.

Between shells (``inter_shell_pairs``): a set number of terminals per
satellite point at the nearest satellites of the adjacent shells (by
altitude), re-chosen on a fixed schedule as the geometry moves.

All of it is a pure function of the constellation and t, so every agent
derives the same links without talking.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from mesh.orbit import EARTH_RADIUS_KM, Constellation, TleShell

GRAZING_ALTITUDE_KM = 80.0  # below this the beam crosses too much atmosphere
LASER_TERMINALS = 4         # +Grid: fore, aft, left, right


def _walker_grid(base: int, planes: int, per_plane: int, kind: str, seam_shift: int,
                 shifts: tuple[int, ...] | None, pairs: set[tuple[int, int]], isl_shift: int = 0) -> None:
    """+Grid of one regular shell; ``shifts[p]`` (TLE shells) or ``isl_shift`` (+ ``seam_shift`` at the seam)."""
    P, S = planes, per_plane

    def idx(p: int, s: int) -> int:
        return base + p * S + (s % S)

    def add(a: int, b: int) -> None:
        if a != b:
            pairs.add((a, b) if a < b else (b, a))

    for p in range(P):
        for s in range(S):
            if S >= 2:
                add(idx(p, s), idx(p, s + 1))
            shift = isl_shift if shifts is None else shifts[p]
            if p + 1 < P:
                add(idx(p, s), idx(p + 1, s + shift))
            elif kind == "delta" and P > 2:
                # Across the seam plane P-1 meets plane 0 (Walker shells: shifted by F more).
                add(idx(p, s), idx(0, s + (shift + seam_shift if shifts is None else shift)))
    # P == 2 delta: the seam neighbour is the other plane again; the
    # in-plane-sequence link already covers it, so no seam pairs.


def grid_pairs(constellation: Constellation, *, max_range_km: float | None = None,
               grazing_km: float = GRAZING_ALTITUDE_KM) -> np.ndarray:
    """Every candidate intra-shell laser link as sorted index pairs, shape (M, 2), sorted.

    Range and grazing only matter for irregular TLE shells, whose
    nearest-neighbour partners are chosen once from the positions at t = 0.
    """
    pairs: set[tuple[int, int]] = set()
    loose: list[int] = []
    for si, shell in enumerate(constellation.shells):
        base = constellation.shell_offset[si]
        if isinstance(shell, TleShell):
            if shell.kind == "irregular":
                loose.extend(range(base, base + shell.size))
            else:
                _walker_grid(base, shell.planes, shell.plane_sizes[0], shell.kind, 0, shell.cross_shift, pairs)
        else:
            _walker_grid(base, shell.planes, shell.sats_per_plane, shell.kind, shell.phasing, None, pairs,
                         isl_shift=shell.isl_shift)
    if loose:
        pairs |= nearest_pairs(constellation, np.array(loose), max_range_km=max_range_km, grazing_km=grazing_km)
    arr = np.array(sorted(pairs), dtype=np.int64)
    return arr.reshape(-1, 2)


def nearest_pairs(constellation: Constellation, members: np.ndarray, *, max_range_km: float | None,
                  grazing_km: float, k: int = 8) -> set[tuple[int, int]]:
    """Greedy nearest-neighbour laser pairing at t = 0, at most four terminals each.

    Shortest candidate first (ties on indices), skipping pairs out of range or
    below the grazing altitude: a deterministic matching every agent repeats.
    """
    pos = constellation.positions(0.0)[members]
    if len(members) < 2:
        return set()
    dist, nb = cKDTree(pos).query(pos, k=min(k + 1, len(members)))
    a = np.repeat(np.arange(len(members)), nb.shape[1] - 1)
    b = nb[:, 1:].ravel()
    d = dist[:, 1:].ravel()
    ok = np.isfinite(d) & (b < len(members))
    a, b, d = a[ok], b[ok], d[ok]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo, d))
    degree = np.zeros(len(members), dtype=int)
    out: set[tuple[int, int]] = set()
    for j in order:
        x, y = int(lo[j]), int(hi[j])
        key = (int(members[x]), int(members[y]))
        if key in out or degree[x] >= LASER_TERMINALS or degree[y] >= LASER_TERMINALS:
            continue
        if max_range_km is not None and d[j] > max_range_km:
            continue
        if segment_clearance_km(pos[[x]], pos[[y]])[0] < grazing_km:
            continue
        out.add(key)
        degree[x] += 1
        degree[y] += 1
    return out


def segment_clearance_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lowest altitude above a spherical Earth along each segment a→b."""
    d = b - a
    dd = np.einsum("ij,ij->i", d, d)
    u = np.clip(-np.einsum("ij,ij->i", a, d) / np.where(dd == 0, 1.0, dd), 0.0, 1.0)
    closest = a + u[:, None] * d
    return np.linalg.norm(closest, axis=1) - EARTH_RADIUS_KM


# -- between shells ------------------------------------------------------------------


def adjacent_shells(constellation: Constellation) -> list[tuple[int, int]]:
    """Shell pairs (i < j) that are neighbours by altitude.

    Altitudes (to the km) are ranked; two shells are adjacent when their ranks
    differ by at most one, so shells at the same altitude (Starlink's two
    97.6° shells) are adjacent to each other and to the ones just above and
    below.
    """
    alts = [round(float(s.altitude_km)) for s in constellation.shells]
    rank = {a: r for r, a in enumerate(sorted(set(alts)))}
    n = len(alts)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if abs(rank[alts[i]] - rank[alts[j]]) <= 1]


def inter_shell_pairs(pos: np.ndarray, shell_offset: list[int], shell_sizes: list[int],
                      adjacent: list[tuple[int, int]], per_satellite: int, *,
                      max_range_km: float | None, grazing_km: float) -> np.ndarray:
    """Laser pairs between adjacent shells at one instant, shape (M, 2), rows (a < b), sorted.

    Each satellite has ``per_satellite`` inter-shell terminals and uses at
    most one per adjacent shell, so a shell between two others reaches both
    rather than spending every terminal on the closer one.  Candidates are
    each satellite's few nearest satellites of every adjacent shell (KD-trees,
    both directions) within range whose line of sight clears the grazing
    altitude.  Pairs are taken shortest first while both ends have a free
    terminal (towards that shell), in rounds: a round accepts every candidate
    that ranks within both ends' free terminals; the shortest remaining
    candidate always does, so every round makes progress.  Deterministic:
    ties break on (a, b).
    """
    if per_satellite <= 0 or not adjacent:
        return np.empty((0, 2), dtype=np.int64)
    n = len(pos)
    n_shells = len(shell_sizes)
    shell = np.repeat(np.arange(n_shells), shell_sizes)
    k = 3                       # nearest candidates per satellite and adjacent shell
    bound = np.inf if max_range_km is None else float(max_range_km)
    trees: dict[int, cKDTree] = {}

    def tree(s: int) -> cKDTree:
        if s not in trees:
            lo = shell_offset[s]
            trees[s] = cKDTree(pos[lo:lo + shell_sizes[s]])
        return trees[s]

    aa, bb, dd = [], [], []
    for si, sj in adjacent:
        for src, dst in ((si, sj), (sj, si)):
            lo_s, lo_d = shell_offset[src], shell_offset[dst]
            q = min(k, shell_sizes[dst])
            dist, nb = tree(dst).query(pos[lo_s:lo_s + shell_sizes[src]], k=q, distance_upper_bound=bound)
            dist, nb = dist.reshape(len(dist), q), nb.reshape(len(nb), q)
            ok = np.isfinite(dist)
            a = np.nonzero(ok)[0] + lo_s
            b = nb[ok] + lo_d
            aa.append(np.minimum(a, b))
            bb.append(np.maximum(a, b))
            dd.append(dist[ok])
    a, b, d = np.concatenate(aa), np.concatenate(bb), np.concatenate(dd)
    if not len(a):
        return np.empty((0, 2), dtype=np.int64)
    _, first = np.unique(a * n + b, return_index=True)
    a, b, d = a[first], b[first], d[first]
    clear = segment_clearance_km(pos[a], pos[b]) >= grazing_km
    a, b, d = a[clear], b[clear], d[clear]
    order = np.lexsort((b, a, d))
    a, b, d = a[order], b[order], d[order]
    # terminals: per satellite, and one per (satellite, other shell)
    free = np.full(n, per_satellite, dtype=np.int64)
    free_to = np.ones(n * n_shells, dtype=np.int64)
    a_to, b_to = a * n_shells + shell[b], b * n_shells + shell[a]
    taken = []
    live = np.ones(len(a), dtype=bool)
    while live.any():
        idx = np.nonzero(live)[0]                         # remaining candidates, shortest first
        ra, rb = _end_ranks(a[idx], b[idx])
        sa, sb = _end_ranks(a_to[idx], b_to[idx])         # rank towards the other end's shell
        accept = idx[(ra < free[a[idx]]) & (rb < free[b[idx]]) & (sa == 0) & (sb == 0)]
        if not len(accept):                               # cannot happen: the shortest is accepted
            break
        taken.append(accept)
        np.subtract.at(free, a[accept], 1)
        np.subtract.at(free, b[accept], 1)
        free_to[a_to[accept]] = 0
        free_to[b_to[accept]] = 0
        live[accept] = False
        live &= (free[a] > 0) & (free[b] > 0) & (free_to[a_to] > 0) & (free_to[b_to] > 0)
    if not taken:
        return np.empty((0, 2), dtype=np.int64)
    sel = np.concatenate(taken)
    out = np.stack([a[sel], b[sel]], axis=1)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def _end_ranks(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For edges in priority order, each edge's rank among the edges sharing its a key, and its b key.

    Keys are node indices (or node-and-shell codes); an edge's two ends are
    counted together, so a node ranks its edges whichever end it is.
    """
    m = len(a)
    ends = np.concatenate([a, b])
    prio = np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((prio, ends))
    sk = ends[order]
    starts = np.r_[0, np.nonzero(np.diff(sk))[0] + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(sk)]))
    rank = np.empty(2 * m, dtype=np.int64)
    rank[order] = np.arange(2 * m) - run_start
    return rank[:m], rank[m:]
