"""External A2A agents: registered from their agent card, run through the official a2a-sdk client."""

from __future__ import annotations

from powerx.agent.v1 import agent_service_pb2 as svc
from servers.agent.service import AgentService
from servers.common.context import CallContext
from servers.common.errors import Unimplemented


async def register_external_agent(
    service: AgentService, req: svc.RegisterExternalAgentRequest, ctx: CallContext
) -> svc.RegisterExternalAgentResponse:
    """Fetches the card at `req.card_url` and registers the agent (not built yet)."""
    raise Unimplemented("external A2A agents are not available yet")
