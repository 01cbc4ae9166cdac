"""The load an agent reports in its heartbeats: CPU and memory of its process, runs, uptime.

Cheap by design: CPU from `time.process_time()` deltas, memory from `/proc/self/statm` where there is one
(Linux); elsewhere memory reads as 0.
"""

from __future__ import annotations

import os
import time

from powerx.agent.v1 import agent_pb2

_STATM = "/proc/self/statm"


def _physical_pages() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


class LoadSampler:
    """Samples the process's load for heartbeats."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._last_wall = self._started
        self._last_cpu = time.process_time()
        self._cpus = os.cpu_count() or 1
        self._pages = _physical_pages()
        self._statm = os.path.exists(_STATM)

    def cpu(self) -> float:
        """CPU used by the process since the last sample, as a fraction of every core (0 to 1)."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._last_wall
        used = cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        if elapsed <= 0:
            return 0.0
        return min(1.0, max(0.0, used / (elapsed * self._cpus)))

    def memory(self) -> float:
        """Resident memory of the process as a fraction of physical memory (0 to 1), or 0 if unknown."""
        if not self._statm or self._pages <= 0:
            return 0.0
        try:
            with open(_STATM, "rb") as f:  # procfs: answered from memory, never blocks on a disk
                resident = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return min(1.0, max(0.0, resident / self._pages))

    def sample(self, active_tasks: int) -> agent_pb2.AgentLoad:
        """The load to report now."""
        load = agent_pb2.AgentLoad(cpu_usage=self.cpu(), mem_usage=self.memory(), active_tasks=active_tasks)
        load.uptime.FromNanoseconds(int((time.monotonic() - self._started) * 1e9))
        return load
