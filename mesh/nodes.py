"""Node names and indices, shared by mesh and agent so both agree on them.

Satellites are nodes ``0 .. n_sats-1`` named ``sat-<index>``; ground station
``k`` (in config order) is node ``n_sats + k`` named ``gs-<station name>``.
Indices are what the physics and the routing tables use; names are what
peers files, APIs and logs show.
"""

from __future__ import annotations

from dataclasses import dataclass

SAT_PREFIX = "sat-"
GROUND_PREFIX = "gs-"


def sat_name(index: int) -> str:
    return f"{SAT_PREFIX}{index}"


def ground_name(station: str) -> str:
    return f"{GROUND_PREFIX}{station}"


@dataclass(frozen=True)
class NodeNames:
    """Index ⇄ name for one constellation plus its ground stations."""

    n_sats: int
    stations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.stations)) != len(self.stations):
            raise ValueError("ground station names must be unique")
        object.__setattr__(self, "_gs", {s: self.n_sats + k for k, s in enumerate(self.stations)})

    def __len__(self) -> int:
        return self.n_sats + len(self.stations)

    def is_ground(self, index: int) -> bool:
        return index >= self.n_sats

    def station_index(self, index: int) -> int:
        """Position of a ground node in the station list (node index − n_sats)."""
        if not self.n_sats <= index < len(self):
            raise KeyError(f"node {index} is not a ground station")
        return index - self.n_sats

    def name(self, index: int) -> str:
        if 0 <= index < self.n_sats:
            return sat_name(index)
        if self.n_sats <= index < len(self):
            return ground_name(self.stations[index - self.n_sats])
        raise KeyError(f"no node {index} (there are {len(self)})")

    def index(self, name: str) -> int:
        """Node index of ``sat-<i>`` or ``gs-<station>``; KeyError otherwise."""
        if name.startswith(SAT_PREFIX):
            digits = name[len(SAT_PREFIX):]
            if digits.isdigit() and int(digits) < self.n_sats and str(int(digits)) == digits:
                return int(digits)
        elif name.startswith(GROUND_PREFIX):
            found = self._gs.get(name[len(GROUND_PREFIX):])  # type: ignore[attr-defined]
            if found is not None:
                return found
        raise KeyError(f"unknown node {name!r}")

    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self))]
