"""The fan-out core: decides which targets each entry still needs, writes them in batches, and says what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from streams.model import ChangeOp, Op, WalEntry
from streams.ports import Outcome, Sink, SinkResult, SinkWrite

PayloadDecoder = Callable[[bytes], Mapping[str, Any]]

_EMPTY: Mapping[str, int] = MappingProxyType({})
_NO_FAILURES: Mapping[str, SinkResult] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the idempotency table remembers per entity key.

    ``applied`` holds, per target, the newest sequence that target is known to hold. ``version`` and
    ``exists`` describe the newest entry applied to all of its targets; they decide `c` versus `u` in CDC.
    """

    applied: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    version: int = -1
    exists: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"a": dict(self.applied), "v": self.version, "e": self.exists}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> KeyState:
        if not data:
            return cls()
        return cls(applied=MappingProxyType(dict(data["a"])), version=int(data["v"]), exists=bool(data["e"]))


_NO_STATE = KeyState()


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """Where one entry stands after a dispatch: every target is applied, skipped as already held, or failed."""

    entry: WalEntry
    applied: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: Mapping[str, SinkResult] = field(default_factory=dict)
    change: ChangeOp | None = None  # set when the entry changed its key: announce it
    newest: bool = False  # the entry became the key's version in every one of its targets

    @property
    def result(self) -> str:
        """applied (now the key's version everywhere), stale (changed nothing), or pending (a target needs it)."""
        if self.failed:
            return "pending"
        return "applied" if self.newest else "stale"

    @property
    def done(self) -> bool:
        return not self.failed

    @property
    def duplicate(self) -> bool:
        """Every target already held this version or a newer one: nothing was written."""
        return not self.failed and not self.applied

    @property
    def fatal(self) -> bool:
        return any(r.outcome is Outcome.FATAL for r in self.failed.values())

    @property
    def pending_targets(self) -> tuple[str, ...]:
        return tuple(self.failed)

    def first_error(self) -> str:
        return next((r.error for r in self.failed.values()), "")


@dataclass(slots=True)
class DispatchResult:
    outcomes: list[EntryOutcome]
    state: dict[str, KeyState]  # the new state of every key the batch touched


def _holds_exactly(held: Mapping[str, int], todo: Sequence[str], skipped: Sequence[str], sequence: int) -> bool:
    """Every one of the entry's targets holds exactly its sequence (none holds a newer one). A plain loop: this
    runs for every entry, and a generator costs more than the test."""
    for targets in (todo, skipped):
        for target in targets:
            if held.get(target, -1) != sequence:
                return False
    return True


def _change(op: Op, existed: bool) -> ChangeOp | None:
    """What the key's newest version does to it: c for a first version (or the first after a delete), u after a
    live one, d for a delete of a live key; a delete of an absent key changes nothing."""
    if op is Op.DELETE:
        return ChangeOp.DELETE if existed else None
    return ChangeOp.UPDATE if existed else ChangeOp.CREATE


class Dispatcher:
    """Applies batches of entries of one namespace to its targets. No Faust, no drivers: sinks are protocols."""

    def __init__(self, sinks: Mapping[str, Sink], decode_payload: PayloadDecoder) -> None:
        self._sinks = dict(sinks)
        self._names = tuple(self._sinks)
        self._decode = decode_payload

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self._sinks)

    async def dispatch(
        self, entries: Sequence[WalEntry], state: Mapping[str, KeyState], versions: Sequence[int] | None = None
    ) -> DispatchResult:
        """Write what each entry still needs; ``state`` holds the table's value for each key of the batch.
        ``versions``: each entry's store version when it is not its sequence (a replicated namespace's
        composite, ``core/versions.py``); the stores and the key state then hold and compare those."""
        everywhere = self._names
        plans: list[tuple[WalEntry, list[str], tuple[str, ...], dict[str, SinkResult] | None]] = []
        writes: dict[str, list[tuple[int, SinkWrite]]] = {name: [] for name in self._sinks}
        for index, entry in enumerate(entries):
            held = state.get(entry.key, _NO_STATE).applied
            failed: dict[str, SinkResult] | None = None
            if entry.targets:
                wanted, failed = self._targets_of(entry)
            else:
                wanted = everywhere
            sequence = entry.sequence if versions is None else versions[index]
            skipped: tuple[str, ...] = ()
            if held:
                todo = [t for t in wanted if sequence > held.get(t, -1)]
                if len(todo) != len(wanted):
                    skipped = tuple(t for t in wanted if t not in todo)
            else:
                todo = list(wanted)
            if todo:
                document: Mapping[str, Any] | None = None
                if entry.op is Op.UPSERT:
                    try:
                        document = self._decode(entry.payload)
                    except ValueError as exc:
                        failed = failed if failed is not None else {}
                        failed.update({t: SinkResult(Outcome.FATAL, f"payload: {exc}") for t in todo})
                        todo = []
                if todo:
                    # One immutable write shared by every target of the entry.
                    write = SinkWrite(entry.key, entry.op, sequence, document, entry.payload)
                    for target in todo:
                        writes[target].append((index, write))
            plans.append((entry, todo, skipped, failed))

        results = await asyncio.gather(*(self._write(name, batch) for name, batch in writes.items() if batch))
        written: dict[str, dict[int, SinkResult]] = dict(results)

        new_state = {e.key: state.get(e.key, _NO_STATE) for e in entries}
        outcomes = []
        for index, (entry, todo, skipped, failed) in enumerate(plans):
            applied: tuple[str, ...] = ()
            if todo:
                done = []
                for target in todo:
                    result = written[target][index]
                    if result.outcome is Outcome.APPLIED or result.outcome is Outcome.STALE:
                        done.append(target)
                    else:
                        failed = failed if failed is not None else {}
                        failed[target] = result
                applied = tuple(done)
            current = new_state[entry.key]
            held_now = current.applied
            sequence = entry.sequence if versions is None else versions[index]
            if applied:
                updated = dict(held_now)
                for target in applied:
                    if updated.get(target, -1) < sequence:
                        updated[target] = sequence
                held_now = MappingProxyType(updated)
            change = None
            newest = False
            version, exists = current.version, current.exists
            # The entry is the key's newest version once every one of its targets holds exactly it: a target
            # holding a newer one means the entry was overtaken, and it is never announced.
            if not failed and sequence > version and _holds_exactly(held_now, todo, skipped, sequence):
                newest = True
                change = _change(entry.op, exists)
                version, exists = sequence, entry.op is Op.UPSERT
            if held_now is not current.applied or version != current.version or exists != current.exists:
                new_state[entry.key] = KeyState(held_now, version, exists)
            outcomes.append(EntryOutcome(entry, applied, skipped, failed or _NO_FAILURES, change, newest))
        return DispatchResult(outcomes, new_state)

    def _targets_of(self, entry: WalEntry) -> tuple[Sequence[str], dict[str, SinkResult] | None]:
        if not entry.targets:
            return self._names, None
        known = [t for t in entry.targets if t in self._sinks]
        unknown = {
            t: SinkResult(Outcome.FATAL, f"target {t!r} is not declared by namespace {entry.namespace!r}")
            for t in entry.targets
            if t not in self._sinks
        }
        return known, unknown or None

    async def _write(self, name: str, batch: list[tuple[int, SinkWrite]]) -> tuple[str, dict[int, SinkResult]]:
        try:
            results = await self._sinks[name].write([w for _, w in batch])
        except Exception as exc:  # noqa: BLE001 - a sink that raises is treated as unavailable, never fatal
            results = [SinkResult(Outcome.RETRYABLE, f"{name}: {type(exc).__name__}: {exc}")] * len(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"sink {name} returned {len(results)} results for {len(batch)} writes")
        return name, {index: result for (index, _), result in zip(batch, results, strict=True)}
