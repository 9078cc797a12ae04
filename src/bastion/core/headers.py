"""Case-insensitive, multi-valued, read-only HTTP header collections."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

__all__ = ["Headers"]


class Headers:
    """Header fields as received, in order. Names are stored lower-cased (RFC 9110 §5.1).

    Lookups go through a dict built once; ``getall`` keeps every value of a repeated field, which is
    what policy needs to notice duplicates (two ``Host`` fields, two ``Content-Length`` fields).

    ``first`` (name → first value) and ``repeats`` (the names that occur more than once, or None) are
    that dict and set, for the per-request path with a lower-case constant name: one dict lookup, no
    method call and no ``lower()``. Read them; never change them.
    """

    __slots__ = ("_items", "first", "repeats")

    def __init__(self, items: Sequence[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(items)
        first: dict[str, str] = {}
        repeated: set[str] | None = None
        for name, value in self._items:
            if name not in first:
                first[name] = value
            elif repeated is None:
                repeated = {name}
            else:
                repeated.add(name)
        self.first = first
        self.repeats = repeated  # names that occur more than once (None: none do, the usual case)

    def repeated(self, name: str) -> bool:
        """Whether the field occurs more than once (then :meth:`getall` has every value)."""
        return self.repeats is not None and name.lower() in self.repeats

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.first.get(name.lower(), default)

    def getall(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._items if n == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.first

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def __repr__(self) -> str:
        # Header values can carry credentials; never show them.
        return f"Headers(names={[n for n, _ in self._items]!r})"
