"""CPython's cyclic garbage collector in a process that holds many long-lived objects.

A node holds a record per member of the fleet, its links, routes and journals; a process of
many nodes (a satellite host, the simulator) holds them many times over: ~350,000 objects
for a simulation of 384 satellites, millions at starlink-s1.  With the default thresholds
(700, 10, 10) a young collection runs every 700 allocations and a full one walks every
object: measured on a 384-satellite simulation (``bench/sim_scale.py``), 15% of its CPU,
and one full collection took 0.4 s.

* ``freeze_start_up``: once a process is up, what it built at start-up (libraries, models,
  the world) is frozen: later collections never walk it again; reference counting still
  frees it.  The daemon and the satellite hosts do this before they answer as ready, and
  keep the default thresholds: a young collection's pause stays short, which frames due
  meanwhile would wait for.
* ``throughput()``: the simulator also collects young objects every 10,000 allocations
  instead of 700, and the older generations as rarely: no frame waits on a pause under a
  virtual clock, and collections then cost ~3% of its CPU, not ~15%.  A full collection
  waits for 100 middle ones, not 10: starlink-gen1's start-up flood grows the heap to 11 GB,
  and CPython starts a full walk of it whenever the old generation has grown by a quarter
  (11 of them in its first 30 simulated seconds, a fifth of the CPU; 1 with 100).
  ``rarely()`` is that alone, without the freeze: the simulator builds its nodes inside it.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

THROUGHPUT_THRESHOLDS = (10_000, 20, 100)    # gen0 allocations, gen0 runs per gen1, gen1 runs per gen2


def freeze_start_up() -> None:
    """Collect once, then move every object alive now out of the collector's sight."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def rarely() -> Iterator[None]:
    """Inside: collect rarely (``THROUGHPUT_THRESHOLDS``); after: the thresholds as they were.
    The simulator starts its nodes inside this: at starlink-s1's size, collections with the
    default thresholds were 5 of a start's 14 CPU s, walking the nodes being built."""
    before = gc.get_threshold()
    gc.set_threshold(*THROUGHPUT_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextlib.contextmanager
def throughput() -> Iterator[None]:
    """Inside: ``freeze_start_up``, then collect rarely (for a run no one waits on, the
    simulator's).  After: the thresholds as they were, and the frozen objects collectable again."""
    freeze_start_up()
    try:
        with rarely():
            yield
    finally:
        gc.unfreeze()
