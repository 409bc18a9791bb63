"""Discrete-event simulator for membership, gossip, routing and delivery (``mesh/sim``).

It runs the production pure core (:mod:`mesh.membership`,
:mod:`mesh.delivery`, :mod:`mesh.healing`) for every node of a
constellation in virtual time, over the same link model as the agents
(:mod:`mesh.link`) and physics delays from :mod:`mesh.topology`, with a fault
schedule (:mod:`mesh.sim.faults`).  Seeded: the same seed gives the same run.

    from mesh.sim import Simulator, build_topology, run_scenario
    report = run_scenario(preset="starlink-s1", seconds=120, seed=1, loss=0.1, kills=1, cuts=1)
"""

from mesh.sim.engine import Simulator
from mesh.sim.faults import Cut, CutOnPath, Kill, Loss, Partition, Restart, StateChange, Tasks
from mesh.sim.node import FloodNode, SimNode, TaskFrame

__all__ = ["Simulator", "SimNode", "FloodNode", "TaskFrame", "Kill", "Restart", "Cut", "CutOnPath", "Partition",
           "Loss", "StateChange", "Tasks"]
