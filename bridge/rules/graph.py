"""The ID links an evaluation may follow, as a small immutable undirected graph.

The dispatcher loads from the store every link touching `refs_to_resolve(event)` and every
link touching those objects' neighbours (two hops), and hands them over as a `LinkGraph`.
The engine then answers ``for_each: {linked: ..., via: ...}`` without any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from bridge.events import Event, ObjectRef


class LinkGraph:
    """Undirected adjacency over `ObjectRef`s; neighbours are returned sorted (determinism)."""

    __slots__ = ("_adjacent",)

    def __init__(self, pairs: Iterable[tuple[ObjectRef, ObjectRef]]) -> None:
        adjacent: dict[ObjectRef, set[ObjectRef]] = {}
        for a, b in pairs:
            if a == b:
                continue
            adjacent.setdefault(a, set()).add(b)
            adjacent.setdefault(b, set()).add(a)
        self._adjacent: Mapping[ObjectRef, tuple[ObjectRef, ...]] = MappingProxyType(
            {ref: tuple(sorted(others)) for ref, others in adjacent.items()}
        )

    def linked(self, ref: ObjectRef, type_key: str | None = None) -> tuple[ObjectRef, ...]:
        """Objects linked to `ref`, optionally only those of `type_key` (``rootly:alert``)."""
        others = self._adjacent.get(ref, ())
        if type_key is None:
            return others
        return tuple(o for o in others if o.type_key == type_key)

    def reachable(
        self, ref: ObjectRef, type_key: str, via: Iterable[str] = ()
    ) -> tuple[ObjectRef, ...]:
        """Objects of `type_key` linked to `ref` directly or through one object of a `via`
        type, de-duplicated and sorted; `ref` itself is never included."""
        found = set(self.linked(ref, type_key))
        for hop_type in via:
            for hop in self.linked(ref, hop_type):
                found.update(self.linked(hop, type_key))
        found.discard(ref)
        return tuple(sorted(found))

    def __len__(self) -> int:
        """Number of links (each undirected pair once)."""
        return sum(len(v) for v in self._adjacent.values()) // 2

    def __repr__(self) -> str:
        return f"LinkGraph({len(self)} links)"


def refs_to_resolve(event: Event) -> set[ObjectRef]:
    """The objects whose links (and their neighbours' links) an evaluation may need."""
    refs = set(event.related)
    if event.subject is not None:
        refs.add(event.subject)
    return refs
