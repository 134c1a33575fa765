"""The two-step admission (a tenant's sub-limits, then the budget) on both stores: exact, and
nothing leaks when the second step says no or fails."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from apim_server.admission import admit
from apim_server.queue import Priority, Ticket
from apim_server.tenants import Tenant
from ratelimit import Cost, EmbeddedStore, Limits, RedisStore, Store
from ratelimit.limiter import Limiter
from ratelimit.limits import Decision
from tests.test_apim_dispatcher import budget


@pytest.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "embedded":
        yield EmbeddedStore()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    redis_store = RedisStore.from_url(url, prefix=prefix)
    try:
        yield redis_store
    finally:
        client = await redis_store.client()
        for k in [k async for k in client.scan_iter(match=f"{{{prefix}:*")]:
            await client.delete(k)
        await redis_store.close()


def capped(store: Store, **limits: int) -> Tenant:
    sub = Limits(**limits)
    return Tenant("capped", 1.0, Priority.HIGH, Limiter(sub, store), f"tenant:capped|{sub.fingerprint()}")


async def used(tenant: Tenant) -> Decision:
    assert tenant.limiter is not None
    return await tenant.limiter.peek(tenant.key)


async def test_sub_limits_are_exact_over_every_budget(store: Store) -> None:
    tenant = capped(store, rpm=3, tpm=100)
    members = [budget(Limits(rpm=100)), budget(Limits(rpm=100), name="other")]
    for member in members:
        member.limiter.store = store
    admitted = 0
    for i in range(6):
        outcome = await admit(members[i % 2], Ticket(Priority.NORMAL, Cost(1, 30), tenant))
        if outcome.decision is not None and outcome.decision.allowed:
            admitted += 1
        else:
            assert outcome.tenant_denial is not None and outcome.tenant_denial.binding is not None
    assert admitted == 3, "three across both budgets, then its own limit"
    seen = await used(tenant)
    assert (seen.state("requests/minute").used, seen.state("tokens/minute").used) == (3, 90)


async def test_when_the_budget_says_no_the_tenants_admission_is_given_back(store: Store) -> None:
    tenant = capped(store, rpm=2, tpm=100, rpd=5)
    member = budget(Limits(rpm=1))
    member.limiter.store = store
    first = await admit(member, Ticket(Priority.NORMAL, Cost(1, 50), tenant))
    assert first.decision is not None and first.decision.allowed and first.charge is not None
    second = await admit(member, Ticket(Priority.NORMAL, Cost(1, 50), tenant))
    assert second.decision is not None and not second.decision.allowed and second.charge is None
    # No leak: the tenant holds exactly the first admission.
    seen = await used(tenant)
    assert [seen.state(n).used for n in ("requests/minute", "tokens/minute", "requests/day")] == [1, 50, 1]
    # No over-admission: its room is exactly what it was, usable by another budget.
    elsewhere = budget(Limits(rpm=100), name="elsewhere")
    elsewhere.limiter.store = store
    third = await admit(elsewhere, Ticket(Priority.NORMAL, Cost(1, 50), tenant))
    assert third.decision is not None and third.decision.allowed
    assert (await admit(elsewhere, Ticket(Priority.NORMAL, Cost(1, 1), tenant))).tenant_denial is not None


async def test_when_the_budget_step_fails_the_tenants_admission_is_given_back(store: Store) -> None:
    tenant = capped(store, rpm=2)
    member = budget(Limits(rpm=100))

    async def broken(cost: Cost, fair: object = None) -> Decision:
        raise ConnectionError("the budget's shard is down")

    member.acquire = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await admit(member, Ticket(Priority.NORMAL, Cost(1, 10), tenant))
    seen = await used(tenant)
    assert (seen.state("requests/minute").used, seen.state("tokens/minute").used) == (0, 0)


async def test_without_sub_limits_only_the_budget_is_asked(store: Store) -> None:
    free = Tenant("free", 1.0, Priority.HIGH)
    member = budget(Limits(rpm=1))
    member.limiter.store = store
    outcome = await admit(member, Ticket(Priority.NORMAL, Cost(1, 0), free))
    assert outcome.decision is not None and outcome.decision.allowed and outcome.charge is None
