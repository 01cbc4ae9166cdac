"""The agent state machine, the scheduler, tokens, signatures and quotas: pure logic, no network."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import struct_pb2

from powerx.agent.v1 import agent_pb2, run_pb2
from sdk import signing
from servers.agent import lifecycle
from servers.agent.lifecycle import (
    ACTIVE,
    ALL,
    BUSY,
    DEGRADED,
    DISCONNECTED,
    IDLE,
    REGISTERING,
    RETIRED,
    DegradePolicy,
    Health,
    IllegalTransition,
)
from servers.agent.scheduler import Candidate, pick
from servers.agent.security import LocalNonces, LocalQuotas, QuotaRule, TokenSigner, token_hash
from servers.agent.validation import grant_allows

# Every legal transition, written out independently of the table in lifecycle.py.
EXPECTED_LEGAL = {
    (REGISTERING, IDLE), (REGISTERING, ACTIVE), (REGISTERING, BUSY), (REGISTERING, DEGRADED),
    (REGISTERING, DISCONNECTED), (REGISTERING, RETIRED), (REGISTERING, REGISTERING),
    (IDLE, ACTIVE), (IDLE, BUSY), (IDLE, DEGRADED), (IDLE, DISCONNECTED), (IDLE, RETIRED),
    (IDLE, REGISTERING),
    (ACTIVE, IDLE), (ACTIVE, BUSY), (ACTIVE, DEGRADED), (ACTIVE, DISCONNECTED), (ACTIVE, RETIRED),
    (ACTIVE, REGISTERING),
    (BUSY, IDLE), (BUSY, ACTIVE), (BUSY, DEGRADED), (BUSY, DISCONNECTED), (BUSY, RETIRED),
    (BUSY, REGISTERING),
    (DEGRADED, IDLE), (DEGRADED, ACTIVE), (DEGRADED, BUSY), (DEGRADED, DISCONNECTED), (DEGRADED, RETIRED),
    (DEGRADED, REGISTERING),
    (DISCONNECTED, IDLE), (DISCONNECTED, ACTIVE), (DISCONNECTED, BUSY), (DISCONNECTED, DEGRADED),
    (DISCONNECTED, RETIRED), (DISCONNECTED, REGISTERING),
    (RETIRED, REGISTERING),
}  # fmt: skip


@pytest.mark.parametrize(("current", "target"), sorted(itertools.product(sorted(ALL), sorted(ALL))))
def test_every_transition_is_legal_or_rejected(current: int, target: int) -> None:
    if current == target and target != REGISTERING:
        assert lifecycle.check(current, target) is False  # staying put is no transition
    elif (current, target) in EXPECTED_LEGAL:
        assert lifecycle.check(current, target) is True
    else:
        with pytest.raises(IllegalTransition) as err:
            lifecycle.check(current, target, "a1")
        assert err.value.metadata == {
            "state": lifecycle.name(current),
            "target": lifecycle.name(target),
            "agent_id": "a1",
        }


def test_unknown_target_state_is_rejected() -> None:
    with pytest.raises(IllegalTransition):
        lifecycle.check(IDLE, agent_pb2.AGENT_STATE_UNSPECIFIED)


def test_live_state_follows_runs_against_capacity() -> None:
    assert lifecycle.live_state(0, 2, False) == IDLE
    assert lifecycle.live_state(1, 2, False) == ACTIVE
    assert lifecycle.live_state(2, 2, False) == BUSY
    assert lifecycle.live_state(0, 2, True) == DEGRADED


def test_degraded_enters_and_leaves_with_hysteresis() -> None:
    p = DegradePolicy(error_rate_enter=0.5, error_rate_exit=0.2, min_runs=5, load_enter=0.95, load_exit=0.8)
    assert not lifecycle.degraded(p, Health(run_count=4, error_rate=1.0), currently=False)  # too few runs
    assert lifecycle.degraded(p, Health(run_count=5, error_rate=0.5), currently=False)
    assert lifecycle.degraded(p, Health(run_count=9, error_rate=0.3), currently=True)  # not yet recovered
    assert not lifecycle.degraded(p, Health(run_count=9, error_rate=0.1), currently=True)
    assert lifecycle.degraded(p, Health(cpu=0.96), currently=False)
    assert lifecycle.degraded(p, Health(mem=0.85), currently=True)
    assert not lifecycle.degraded(p, Health(mem=0.7), currently=True)


def _c(agent_id: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"state": IDLE, "active_runs": 0, "max_concurrency": 2}
    return Candidate(agent_id=agent_id, **{**base, **kw})  # type: ignore[arg-type]


def test_scheduler_strategies() -> None:
    a = _c("a", active_runs=1, cpu=0.1, region="eu", cost_weight=3.0)
    b = _c("b", active_runs=0, cpu=0.9, region="us", cost_weight=1.0)
    c = _c("c", active_runs=0, cpu=0.2, region="eu", cost_weight=2.0)
    pool = [a, b, c]
    least = run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD
    assert pick(pool, least) == c  # fewest slots used, then the lowest CPU
    assert pick(pool, run_pb2.SCHEDULING_STRATEGY_REGION_AFFINITY, region="eu") == c
    assert pick(pool, run_pb2.SCHEDULING_STRATEGY_REGION_AFFINITY, region="ap") == c  # none there: least load
    assert pick(pool, run_pb2.SCHEDULING_STRATEGY_COST_WEIGHTED) == b
    rr = run_pb2.SCHEDULING_STRATEGY_ROUND_ROBIN
    assert [pick(pool, rr, turn=t).agent_id for t in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]


def test_scheduler_skips_full_agents_and_prefers_healthy_ones() -> None:
    full = _c("full", active_runs=2)
    reported_full = _c("reported", reported_tasks=2)
    degraded = _c("deg", state=DEGRADED)
    assert pick([full, reported_full], run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD) is None
    assert pick([full, degraded], run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD) == degraded  # last resort
    healthy = _c("z", active_runs=1)
    assert pick([degraded, healthy], run_pb2.SCHEDULING_STRATEGY_LEAST_LOAD) == healthy


def test_tokens_verify_and_reject_forgeries() -> None:
    signer = TokenSigner(b"s" * 32)
    token = signer.issue("t1", "com.acme.a", 1234)
    claims = signer.verify(token)
    assert claims is not None
    assert (claims.tenant_id, claims.agent_id, claims.issued_ms) == ("t1", "com.acme.a", 1234)
    assert len(token_hash(token)) == 64
    assert signer.issue("t1", "com.acme.a", 1234) != token  # a nonce makes every token unique
    body, mac = token.split(".")
    assert TokenSigner(b"x" * 32).verify(token) is None  # another mesh's secret
    assert signer.verify(body + "." + mac[:-2] + "AA") is None  # tampered MAC
    assert signer.verify(body[:-3] + "abc." + mac) is None  # tampered claims
    assert signer.verify("agt_garbage") is None
    assert signer.verify("Bearer " + token) is None
    with pytest.raises(ValueError, match="16 bytes"):
        TokenSigner(b"short")


def test_manifest_and_call_signatures() -> None:
    key = signing.AgentKey()
    agent = agent_pb2.Agent(agent_id="a", version="1.0.0", skills=["x.y"], state=IDLE, tenant_id="t1")
    key.sign_manifest(agent)
    pk = signing.public_key_of(agent.public_key)
    assert pk is not None
    sig = signing.decode_signature(agent.signature)
    assert sig is not None
    assert signing.verify(pk, sig, signing.canonical_manifest(agent))
    agent.state = DISCONNECTED  # output-only fields are not signed
    assert signing.verify(pk, sig, signing.canonical_manifest(agent))
    agent.skills.append("x.z")  # but the manifest is
    assert not signing.verify(pk, sig, signing.canonical_manifest(agent))

    args = struct_pb2.Struct()
    args.update({"b": 1, "a": [1, "x"]})
    header = key.sign_call(
        tenant_id="t1", caller_agent_id="a", parent_run_id="", capability_id="x.y", arguments=args, now=100
    )
    parsed = signing.CallSignature.parse(header)
    assert parsed is not None
    assert parsed.t == 100

    def data(capability: str) -> bytes:
        assert parsed is not None
        return signing.call_string(
            tenant_id="t1",
            caller_agent_id="a",
            parent_run_id="",
            capability_id=capability,
            digest=signing.arguments_digest(args),
            t=parsed.t,
            nonce=parsed.nonce,
        )

    assert signing.verify(pk, parsed.signature, data("x.y"))
    assert not signing.verify(pk, parsed.signature, data("x.z"))
    assert signing.CallSignature.parse("t=1,n=abc,s=zz") is None
    assert signing.public_key_of("not base64!") is None


async def test_nonces_are_single_use_until_they_expire() -> None:
    now = [0.0]
    nonces = LocalNonces(clock=lambda: now[0])
    assert await nonces.first_use("n1", 10)
    assert not await nonces.first_use("n1", 10)
    now[0] = 11
    assert await nonces.first_use("n1", 10)


async def test_quota_buckets_refill_at_their_rate() -> None:
    now = [0.0]
    quotas = LocalQuotas(clock=lambda: now[0])
    rule = QuotaRule(rate=2, burst=2)
    assert await quotas.take("k", rule) == 0
    assert await quotas.take("k", rule) == 0
    wait = await quotas.take("k", rule)
    assert wait == pytest.approx(0.5)
    now[0] = 0.5
    assert await quotas.take("k", rule) == 0
    assert await quotas.take("other", rule) == 0  # buckets are per key
    assert await quotas.take("k", QuotaRule()) == 0  # no limit


def test_quota_rule_parsing() -> None:
    assert QuotaRule.parse("rate=5", "Q") == QuotaRule(rate=5, burst=10)
    assert QuotaRule.parse("rate=5,burst=7", "Q") == QuotaRule(rate=5, burst=7)
    assert QuotaRule.parse("", "Q") == QuotaRule()
    for bad in ("rate=x", "speed=1", "rate=-1", "rate=inf"):
        with pytest.raises(ValueError, match="Q"):
            QuotaRule.parse(bad, "Q")


def test_grants() -> None:
    assert grant_allows(["crm.lead.*"], "crm.lead.fetch")
    assert not grant_allows(["crm.lead.*"], "crm.leadx")
    assert not grant_allows(["crm.lead.*"], "crm.contact.fetch")
    assert grant_allows(["*"], "anything")
    assert grant_allows(["a.b"], "a.b")
    assert not grant_allows([], "a.b")
