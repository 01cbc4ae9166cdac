r"""A real agent process for trying the mesh's agent service and for the SDK's tests.

Run it against a mesh (`make up`):

    python -m examples.echo_agent --mesh 127.0.0.1:50051 --tenant t1 --agent-id com.example.echo-agent

Once connected it prints one JSON line to stdout, `{"ready": true, "pid": …, "agent_id": …,
"session_id": …, "skills": [...]}`, and serves until SIGTERM or SIGINT, which sign it off (the mesh hands
its unfinished runs on at once). Logs go to stderr.

Every skill (`--skill`, repeatable; default `echo.words`) does the same: it streams the words of the
run's goal (or of its `text` input) back as tokens, one every `--delay-ms`, logs how many it sent, and
returns `{"text", "words", "agent", "skill", "attempt"}`.

A restarted agent must show the mesh its token: `--state-file` keeps the token, session and key across
restarts (without it, a second start of the same agent id fails with AGENT_EXISTS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from sdk import Agent, AgentError, TaskContext


def build_agent(opts: argparse.Namespace) -> Agent:
    """The echo agent described by the command line options."""
    agent = Agent(
        opts.agent_id,
        version=opts.version,
        tenant_id=opts.tenant,
        mesh=opts.mesh,
        tool_grants=opts.grant,
        max_concurrency=opts.max_concurrency,
        heartbeat_interval_s=opts.heartbeat,
        mode=opts.mode,
        display_name="Echo agent",
        description="Streams the words of its goal back, for trying and testing the mesh",
        state_path=opts.state_file,
        stop_grace_s=opts.stop_grace,
    )
    delay_s = opts.delay_ms / 1000.0

    async def echo(task: TaskContext) -> dict[str, Any]:
        text = task.goal or str(task.inputs.get("text", ""))
        words = text.split()
        await task.log("info", f"echoing {len(words)} words")
        for i, word in enumerate(words):
            if i and delay_s > 0:
                await asyncio.sleep(delay_s)
            await task.token(word if i == len(words) - 1 else word + " ")
        return {
            "text": text,
            "words": len(words),
            "agent": agent.agent_id,
            "skill": task.skill,
            "attempt": task.attempt,
        }

    for skill in opts.skill or ["echo.words"]:
        agent.skill(skill)(echo)
    return agent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(prog="python -m examples.echo_agent", description=__doc__.split("\n")[0])
    parser.add_argument("--mesh", required=True, help="the mesh's gRPC address, HOST:PORT")
    parser.add_argument("--tenant", required=True, help="tenant that owns the agent")
    parser.add_argument("--agent-id", required=True, help="agent id, such as com.example.echo-agent")
    parser.add_argument(
        "--skill", action="append", default=[], help="a skill to serve (repeatable; default: echo.words)"
    )
    parser.add_argument(
        "--grant", action="append", default=[], help="a tool grant, such as crm.* (repeatable)"
    )
    parser.add_argument("--version", default="1.0.0", help="agent version (default: 1.0.0)")
    parser.add_argument("--max-concurrency", type=int, default=4, help="runs at once (default: 4)")
    parser.add_argument(
        "--heartbeat", type=float, default=10.0, help="heartbeat interval in seconds (default: 10)"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between two tokens (default: 0)")
    parser.add_argument(
        "--mode", choices=("stream", "unary"), default="stream", help="session channel or unary calls"
    )
    parser.add_argument("--state-file", default=None, help="file that keeps the token across restarts")
    parser.add_argument(
        "--stop-grace", type=float, default=5.0, help="seconds running runs get to finish on SIGTERM"
    )
    return parser.parse_args(argv)


def _print_ready(agent: Agent) -> None:
    line = {
        "ready": True,
        "pid": os.getpid(),
        "agent_id": agent.agent_id,
        "session_id": agent.session_id,
        "skills": agent.skills,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the echo agent until SIGTERM or SIGINT; returns the exit status."""
    opts = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        build_agent(opts).run(on_ready=_print_ready)
    except (AgentError, ValueError) as exc:
        logging.getLogger("echo_agent").error("echo agent failed: %s", exc)  # noqa: TRY400
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
