"""The fan-out step of one namespace: decode, delay or apply, route; batches in order, state in the table."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.codec import DecodeError
from streams.core.dispatch import KeyState
from streams.pipeline.apply import Applier, NotDurable, Pending, Record, Sends, settle
from streams.pipeline.batching import finish, retrieve
from streams.ports import StateTable


class FanoutProcessor:
    """The fan-out agent's step for one namespace: decode → delay or dispatch → route → (caller acks).

    It is the one writer of its keys: first deliveries and entries handed back by the retry tiers alike pass
    here, and only here is it decided (from the key's state) whether an entry changes its key and is announced.

    Batches may be processed concurrently (the Batcher pipelines them) and stay in order all the same: the apply
    step (sink writes, change events, retry and DLQ records) runs one batch at a time, in the order the batches
    arrived, and sees the idempotency state every earlier batch left, even before it is in the table. Each batch
    then waits until its own follow-up records are durable and the batch before it has finished, and only then
    writes its keys' new state to the table's changelog, and once that is durable, to the table itself. Once a
    batch failed, every later batch fails too, so nothing after it can be acknowledged, and no later state
    reaches the changelog ahead of an earlier batch's change events."""

    def __init__(self, applier: Applier, table: StateTable) -> None:
        self.namespace = applier.namespace
        self._applier = applier
        self._table = table
        self._applying = asyncio.Lock()
        # New state of keys whose batch has not written it to the table yet (at most a few batches' keys).
        self._unsaved: dict[str, KeyState] = {}
        self._previous: asyncio.Future[None] | None = None  # done when the batch before this one has finished
        self._failure: BaseException | None = None

    async def process(self, records: Sequence[Record]) -> None:
        sends: Sends = []
        async with self._applying:
            self._check()
            items: list[Pending] = []
            undecodable: list[tuple[Record, DecodeError]] = []
            for record in records:
                entry = self._applier.decode(record)
                if isinstance(entry, DecodeError):
                    undecodable.append((record, entry))
                    continue
                item = Pending(entry, record.value, record.origin, record.attempt, record.first_error)
                if not self._applier.delay_if_not_due(item, sends):
                    items.append(item)
            state: dict[str, KeyState] = {}
            for item in items:
                key = item.entry.key
                if key not in state:
                    unsaved = self._unsaved.get(key)
                    state[key] = unsaved if unsaved is not None else KeyState.from_json(self._table.get(key.encode()))
            try:
                await self._applier.dead_letter_undecodable(undecodable, sends)
                new_state = await self._applier.apply(items, state, sends) if items else {}
            except BaseException as exc:
                self._fail(exc)
                raise
            changed = {key: new for key, new in new_state.items() if new != state.get(key)}
            self._unsaved.update(changed)
            partition = {item.entry.key: item.origin.partition for item in items}
            previous = self._previous
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            finished.add_done_callback(retrieve)
            self._previous = finished
        try:
            await settle(sends)
            if previous is not None:
                await asyncio.shield(previous)  # raises when an earlier batch failed
            saved = [(name.encode(), partition[name], new.to_json()) for name, new in changed.items()]
            await settle([self._table.persist(saved)])
            for raw, _, value in saved:
                self._table.set(raw, value)
        except BaseException as exc:
            self._fail(exc)
            finish(finished, exc)
            raise
        finish(finished, None)
        for key, new in changed.items():
            if self._unsaved.get(key) is new:  # a later batch may have moved the key on already
                del self._unsaved[key]

    def _check(self) -> None:
        if self._failure is not None:
            raise NotDurable(f"an earlier batch of {self.namespace} failed: {self._failure!r}") from self._failure

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._unsaved.clear()
