"""Fair shares across instances: what an admission tells the budget's record about tenants.

With an ``Ask``, an admission also keeps, next to the budget's log and in its hash slot (so it is
atomic with the admission, one round trip, and works on a Cluster):
- each tenant's finish tag on the budget's virtual clock (start-time fair queueing, see
  ``apim_server.flows``): the tenant's start is max(clock, finish); an admission moves its
  finish to start + share and the clock to at least that start. Tags are forgotten once the
  budget has admitted nothing for a whole window (a new busy period starts level). An ask of
  share 0 orders by class alone and keeps no tags (a gateway without tenants);
- a waiting registry: per instance, every tenant it has waiting on this budget with its best
  class, when the instance asks again and when the entry lapses. An admission that fits the
  limits yields (denied, ``Decision.yielded``) while a waiting tenant is ahead of it: a better
  class, or the same class and an earlier start. Ahead at another instance: the yield waits
  until that instance asks again (a short ``wait_ms``). Ahead at the asking instance itself (its
  own order was stale: another instance served one of its tenants meanwhile; only with
  ``Ask.own``): ``wait_ms`` 0, and the answer's ``tags`` refresh that order so the next ask
  picks right. Entries lapse on
  their own, so a stopped instance holds nobody back for long.
Every waiting tenant is in the registry, not one head per instance: a head chosen by an
instance's own (stale) order may not be the tenant the budget's tags put first.

Both stores apply these rules identically (the conformance suite and the property test hold them
to it); calls without an ``Ask`` work and cost as before. Per ask the record costs O(waiting
tenants over all instances): a hash of instances, and the tags of the tenants compared.
"""

from __future__ import annotations

from dataclasses import dataclass

SLACK_MS = 250
"""How long past its announced time a waiting entry still holds others back (the instance's
lateness in asking again)."""
RETRY_MS = 5
"""A yield to another instance waits until that instance asks again, and this much more."""
HOLD_MS = 1000
"""The furthest ahead an entry may announce its next ask: an instance waiting longer asks again
by then, so a stopped instance's entry lapses within HOLD_MS + SLACK_MS."""
TAGS = "~v"
"""The tags hash's field for the virtual clock (tenant names never start with ``~``)."""


@dataclass(frozen=True, slots=True)
class Ask:
    """One admission's place in the fair order, and what else its instance has waiting."""

    tenant: str
    priority: int  # 0 (high) to 2 (low)
    share: int  # its dominant share of the budget over its tenant's weight (0: classes only)
    instance: str  # this instance's id in the registry (letters, digits, '-')
    rest: int = -1  # the best class of its tenant's other waiting tickets here (-1: none)
    others: tuple[tuple[int, str], ...] = ()  # other tenants waiting here: (best class, name)
    # Whether it yields to ``others`` ahead of it too: only when the instance's order follows this
    # budget's tags (a pool of one budget); a pool of several keeps an order of its own.
    own: bool = True

    def wire(self) -> str:
        """As the seventh element of lua/limiter.lua's argument array (names need no escaping:
        tenant names and instance ids are letters, digits and ``_.-()``)."""
        others = ",".join(f'{c},"{t}"' for c, t in self.others)
        return (
            f'["{self.tenant}",{self.priority},{self.share},"{self.instance}",{self.rest},'
            f"[{others}],{SLACK_MS},{RETRY_MS},{HOLD_MS},{int(self.own)}]"
        )

    def waiting(self, admitted: bool) -> list[tuple[int, str]]:
        """The instance's entry after this ask: its other tenants, and its own tenant at its best
        class (the rest only, once admitted)."""
        own = self.rest if admitted else (self.priority if self.rest < 0 else min(self.priority, self.rest))
        return [*self.others, (own, self.tenant)] if own >= 0 else list(self.others)
