"""The agent lifecycle state machine (seed 002 §2, §3): pure, no I/O and no clock of its own.

REGISTERING ── first heartbeat ──▶ IDLE ⇄ ACTIVE ⇄ BUSY            (by runs against max_concurrency)
                                     ▲  ╲   │   ╱
                                     │   DEGRADED                      (error rate, latency or load)
   any live state ── 3 missed heartbeats / operator ──▶ DISCONNECTED ── heartbeat on its session ──▶ live
   any state but RETIRED ── deregistration ──▶ RETIRED ── registration again ──▶ REGISTERING

Every other transition is illegal and raises `IllegalTransition`. Staying in the same state is not a
transition.
"""

from __future__ import annotations

from dataclasses import dataclass

from powerx.agent.v1 import agent_pb2
from servers.common.errors import FailedPrecondition

REGISTERING = agent_pb2.AGENT_STATE_REGISTERING
ACTIVE = agent_pb2.AGENT_STATE_ACTIVE
IDLE = agent_pb2.AGENT_STATE_IDLE
BUSY = agent_pb2.AGENT_STATE_BUSY
DEGRADED = agent_pb2.AGENT_STATE_DEGRADED
DISCONNECTED = agent_pb2.AGENT_STATE_DISCONNECTED
RETIRED = agent_pb2.AGENT_STATE_RETIRED

# States in which the agent is heartbeating and can be handed runs (BUSY ones once a slot frees up).
LIVE = frozenset({IDLE, ACTIVE, BUSY, DEGRADED})
ALL = frozenset({REGISTERING, *LIVE, DISCONNECTED, RETIRED})

LEGAL: dict[int, frozenset[int]] = {
    REGISTERING: frozenset({*LIVE, DISCONNECTED, RETIRED, REGISTERING}),
    IDLE: frozenset({ACTIVE, BUSY, DEGRADED, DISCONNECTED, RETIRED, REGISTERING}),
    ACTIVE: frozenset({IDLE, BUSY, DEGRADED, DISCONNECTED, RETIRED, REGISTERING}),
    BUSY: frozenset({IDLE, ACTIVE, DEGRADED, DISCONNECTED, RETIRED, REGISTERING}),
    DEGRADED: frozenset({IDLE, ACTIVE, BUSY, DISCONNECTED, RETIRED, REGISTERING}),
    DISCONNECTED: frozenset({*LIVE, RETIRED, REGISTERING}),
    RETIRED: frozenset({REGISTERING}),
}


def name(state: int) -> str:
    """`ACTIVE` for AGENT_STATE_ACTIVE."""
    return agent_pb2.AgentState.Name(state).removeprefix("AGENT_STATE_")


class IllegalTransition(FailedPrecondition):
    """The agent's state does not allow the change asked for."""

    default_reason = "ILLEGAL_AGENT_TRANSITION"

    def __init__(self, current: int, target: int, agent_id: str = "") -> None:
        who = f"agent {agent_id} is" if agent_id else "the agent is"
        super().__init__(
            f"{who} {name(current)} and cannot become {name(target)}",
            metadata={
                "state": name(current),
                "target": name(target),
                **({"agent_id": agent_id} if agent_id else {}),
            },
        )


def check(current: int, target: int, agent_id: str = "") -> bool:
    """Whether `current → target` changes anything; raises IllegalTransition when it is not allowed."""
    if target not in ALL:
        raise IllegalTransition(current, target, agent_id)
    if current == target and target != REGISTERING:
        return False
    if target not in LEGAL.get(current, frozenset()):
        raise IllegalTransition(current, target, agent_id)
    return True


@dataclass(frozen=True)
class DegradePolicy:
    """When a live agent counts as DEGRADED, with hysteresis so that it does not flap.

    Attributes:
        error_rate_enter: Moving error rate at or above which the agent degrades.
        error_rate_exit: Moving error rate below which a degraded agent recovers.
        min_runs: Runs the agent must have finished before its error rate counts.
        latency_enter_s: Moving average run latency at or above which it degrades (0 disables).
        load_enter: Reported CPU or memory use (0-1) at or above which it degrades.
        load_exit: Reported CPU and memory use below which a degraded agent recovers.
    """

    error_rate_enter: float = 0.5
    error_rate_exit: float = 0.2
    min_runs: int = 5
    latency_enter_s: float = 0.0
    load_enter: float = 0.95
    load_exit: float = 0.8


@dataclass(frozen=True)
class Health:
    """What the degrade decision looks at."""

    run_count: int = 0
    error_rate: float = 0.0
    avg_latency_s: float = 0.0
    cpu: float = 0.0
    mem: float = 0.0


def degraded(policy: DegradePolicy, health: Health, currently: bool) -> bool:
    """Whether the agent is degraded, given whether it is now."""
    rated = health.run_count >= policy.min_runs
    if currently:
        still_errors = rated and health.error_rate >= policy.error_rate_exit
        still_slow = policy.latency_enter_s > 0 and health.avg_latency_s >= policy.latency_enter_s * 0.8
        still_loaded = max(health.cpu, health.mem) >= policy.load_exit
        return still_errors or still_slow or still_loaded
    errors = rated and health.error_rate >= policy.error_rate_enter
    slow = policy.latency_enter_s > 0 and rated and health.avg_latency_s >= policy.latency_enter_s
    loaded = max(health.cpu, health.mem) >= policy.load_enter
    return errors or slow or loaded


def live_state(active_runs: int, max_concurrency: int, is_degraded: bool) -> int:
    """The live state an agent is in: DEGRADED, else BUSY at capacity, ACTIVE with runs, IDLE without."""
    if is_degraded:
        return DEGRADED
    if active_runs >= max_concurrency:
        return BUSY
    return ACTIVE if active_runs > 0 else IDLE
