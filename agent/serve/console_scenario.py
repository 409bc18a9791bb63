"""A chaos scenario started from the console page, run by the agent that serves it.

The same TOML timeline as ``orbitmesh chaos scenario`` (docs/chaos.md), checked
against the fleet's topology before anything is applied, then run in the
node's own nursery (it outlives the request that started it).  Link faults go
through this agent's API with the caller's token, as the CLI would send them;
node faults (kill, pause, restart) only where the agent can reach the
processes (a local fleet).  One scenario at a time per agent, bounded in
events and length; ``GET /v1/console/scenario`` shows its progress.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from agent.ops.chaos_cli import (NODE_ACTIONS, LocalNodeChaos, NodeChaosError, ScenarioError, parse_scenario, run_scenario,
                             world_topo)

if TYPE_CHECKING:
    from agent.runtime.node import Node

MAX_SCENARIO_BYTES = 64 * 1024
MAX_EVENTS = 500
MAX_SCENARIO_S = 3600.0


class ScenarioBusy(Exception):
    """A scenario is already running here."""


class ScenarioRunner:
    def __init__(self, node: "Node", fleet_dir: Path | None):
        self.node = node
        self.fleet_dir = fleet_dir
        self.state: dict[str, Any] = {"running": False, "events": 0, "applied": [], "log": [], "error": None}

    def _node_chaos(self) -> LocalNodeChaos | None:
        if self.fleet_dir is None or not (self.fleet_dir / "fleet.json").is_file():
            return None
        return LocalNodeChaos(self.fleet_dir)

    def start(self, text: str, token: str | None) -> dict[str, Any]:
        """Check the scenario and start it; ScenarioError (400) or ScenarioBusy / NodeChaosError (409)."""
        if self.state["running"]:
            raise ScenarioBusy(f"a scenario is running on {self.node.me.name} "
                               f"({len(self.state['applied'])} of {self.state['events']} events applied)")
        names = {e.index: e.name for e in self.node.peers.by_name.values()}
        events = parse_scenario(text, world_topo(self.node.world, names))
        if not events:
            raise ScenarioError("the scenario has no events")
        if len(events) > MAX_EVENTS or events[-1].at > MAX_SCENARIO_S:
            raise ScenarioError(f"a scenario from the console has at most {MAX_EVENTS} events within "
                                f"{MAX_SCENARIO_S:.0f} s (this one: {len(events)} events over {events[-1].at:.0f} s)")
        nodes = None
        if any(ev.action in NODE_ACTIONS for ev in events):
            nodes = self._node_chaos()
            if nodes is None:
                raise NodeChaosError("this scenario kills, pauses or restarts nodes, and this agent cannot reach "
                                     "other nodes' processes (not a local fleet): run it with `orbitmesh chaos "
                                     "scenario FILE --compose PROJECT`")
        if self.node._nursery is None:
            raise ScenarioBusy(f"{self.node.me.name} is still starting")
        self.state = {"running": True, "events": len(events), "applied": [], "log": [], "error": None,
                      "started": time.time(), "length_s": events[-1].at}
        self.node._nursery.start_soon(self._run, events, nodes, token)
        return {"events": len(events), "length_s": events[-1].at, "node_faults": nodes is not None}

    async def _run(self, events, nodes, token: str | None) -> None:
        log: list[str] = self.state["log"]
        try:
            self.state["applied"] = await run_scenario(events, [self.node.peers[self.node.me.name].api],
                                                       echo=lambda line: log.append(line.strip()) if len(log) < 1000
                                                       else None, nodes=nodes, token=token)
        except Exception as exc:  # noqa: BLE001 — the scenario's failure is reported, not the agent's
            self.state["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.state["running"] = False
            self.state["finished"] = time.time()

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.state.items() if k != "applied"} | {"applied": len(self.state["applied"])}
