"""The file that keeps an agent's token, session and key across restarts (`Agent(state_path=…)`).

A restarted agent must show the mesh its current token to register again; without it the mesh answers
AGENT_EXISTS. The file is JSON, written atomically with mode 0600. These functions block (small local
files): the agent runs them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("powerx.sdk.agent")


def read_state(path: Path) -> dict[str, Any]:
    """The saved state, or an empty dict when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable agent state %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replaces the saved state (readable by the owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
