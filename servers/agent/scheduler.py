"""Picking an agent for a run (seed 002 §6): pure functions over candidates, no I/O.

Candidates are the live agents of the run's tenant (or sharing with it) that have the run's skill and
role; the service builds them from its directory and the heartbeats' load. An agent without a free
slot is never picked (the run waits in the queue instead); a DEGRADED agent only when no healthy one
has a slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from powerx.agent.v1 import run_pb2
from servers.agent.lifecycle import DEGRADED

ROUND_ROBIN = run_pb2.SCHEDULING_STRATEGY_ROUND_ROBIN
LEAST_LOAD = run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD
REGION_AFFINITY = run_pb2.SCHEDULING_STRATEGY_REGION_AFFINITY
COST_WEIGHTED = run_pb2.SCHEDULING_STRATEGY_COST_WEIGHTED
STRATEGIES = frozenset({ROUND_ROBIN, LEAST_LOAD, REGION_AFFINITY, COST_WEIGHTED})


@dataclass(frozen=True)
class Candidate:
    """One agent that could take the run.

    Attributes:
        agent_id: The agent.
        state: Its lifecycle state (a live one).
        active_runs: Runs the mesh has handed it that have not finished.
        max_concurrency: Runs it takes at once.
        cpu: CPU use from its last heartbeat (0-1).
        mem: Memory use from its last heartbeat (0-1).
        reported_tasks: Active tasks from its last heartbeat (may include work the mesh did not assign).
        region: Where it runs.
        cost_weight: Relative cost of a run on it.
    """

    agent_id: str
    state: int
    active_runs: int
    max_concurrency: int
    cpu: float = 0.0
    mem: float = 0.0
    reported_tasks: int = 0
    region: str = ""
    cost_weight: float = 1.0

    @property
    def free(self) -> int:
        """Slots left."""
        return self.max_concurrency - max(self.active_runs, self.reported_tasks)

    @property
    def load(self) -> tuple[float, float, float, str]:
        """Sort key of least load: share of slots in use, then CPU, then memory; the id breaks ties."""
        used = max(self.active_runs, self.reported_tasks) / max(self.max_concurrency, 1)
        return (used, self.cpu, self.mem, self.agent_id)


def pick(
    candidates: Sequence[Candidate], strategy: int, *, region: str = "", turn: int = 0
) -> Candidate | None:
    """The agent to hand the run to, or None when none has a free slot.

    Args:
        candidates: Agents with the skill (any order).
        strategy: A SchedulingStrategy; UNSPECIFIED means LEAST_LOAD.
        region: Region to prefer (REGION_AFFINITY only).
        turn: Round-robin position for this group of candidates (the caller keeps and advances it).
    """
    open_ = [c for c in candidates if c.free > 0]
    healthy = [c for c in open_ if c.state != DEGRADED]
    pool = healthy or open_
    if not pool:
        return None
    if strategy == ROUND_ROBIN:
        ordered = sorted(pool, key=lambda c: c.agent_id)
        return ordered[turn % len(ordered)]
    if strategy == REGION_AFFINITY and region:
        local = [c for c in pool if c.region == region]
        pool = local or pool
    if strategy == COST_WEIGHTED:
        return min(pool, key=lambda c: (c.cost_weight, *c.load))
    return min(pool, key=lambda c: c.load)
