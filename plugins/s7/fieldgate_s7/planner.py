"""Read planning: the properties due together merged into byte ranges, and the ranges packed into the fewest
multi-variable read requests that fit the PDU the PLC negotiated (and at most 20 items a request)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from fieldgate_s7.codec import RangeDecoder
from fieldgate_s7.config import S7Visitor

MAX_ITEMS = 20  # variables one read request may name (the S7 limit snap7 keeps too)
HEADER = 12  # the S7 header of a request or an answer
READ_PARAMS = 2  # function and item count
ITEM_SPEC = 12  # one variable's address in a read request
ITEM_HEADER = 4  # return code, transport size and length before each item of an answer
MIN_CHUNK = 2  # the smallest piece of a range worth an item of its own
AREA_NAMES = {0x81: "I", 0x82: "Q", 0x83: "M", 0x84: "DB"}


def item_limit(pdu: int) -> int:
    """Variables one read request may name within this PDU size."""
    return max(1, min(MAX_ITEMS, (pdu - HEADER - READ_PARAMS) // ITEM_SPEC))


def answer_room(pdu: int) -> int:
    """Bytes the items of one answer (headers, data and fill bytes) may take."""
    return pdu - HEADER - READ_PARAMS


def item_cost(size: int) -> int:
    """What an item of `size` data bytes takes of an answer: its header, the data, a fill byte after an odd size."""
    return ITEM_HEADER + size + (size & 1)


@dataclass(eq=False)
class Range:
    """Consecutive bytes of one area (or DB) holding one or more properties, read as one or more items."""

    area: int
    db: int
    start: int
    size: int
    fields: list[tuple[str, S7Visitor, int]]  # name, visitor, byte offset from `start`
    decoder: RangeDecoder = field(init=False)
    cuts: list[int] = field(init=False)  # offsets where the range may be split without cutting a value

    def __post_init__(self) -> None:
        self.decoder = RangeDecoder(self.fields)
        self.cuts = _cuts(self.fields, self.size)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.fields)

    def describe(self) -> str:
        where = f"DB{self.db}" if self.area == 0x84 else AREA_NAMES.get(self.area, hex(self.area))
        return f"{where} bytes {self.start}..{self.start + self.size - 1}"


@dataclass(frozen=True)
class Item:
    """One variable of a read request: `size` bytes of range `index` from its byte `at`."""

    index: int
    at: int
    size: int


@dataclass(eq=False)
class ReadPlan:
    """The ranges of a set of properties and the requests that read them; `isolated` names properties read on
    their own because a range they were merged into was refused."""

    properties: tuple[tuple[str, S7Visitor], ...]
    pdu: int
    max_gap: int
    isolated: frozenset[str] = frozenset()
    ranges: list[Range] = field(default_factory=list)
    requests: list[list[Item]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ranges = merge(self.properties, self.max_gap, self.isolated)
        self.requests = pack(self.ranges, self.pdu)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.properties)

    def isolate(self, names: Collection[str]) -> None:
        """Read these properties on their own from now on."""
        self.isolated = self.isolated | frozenset(names)
        self.__post_init__()


def merge(properties: Sequence[tuple[str, S7Visitor]], max_gap: int, isolated: Collection[str] = ()) -> list[Range]:
    """Properties into ranges per area and DB, reading through holes of up to `max_gap` bytes."""
    ordered = sorted(properties, key=lambda p: (p[1].area_code, p[1].block, p[1].offset, -p[1].size))
    ranges: list[Range] = []
    group: list[tuple[str, S7Visitor]] = []
    start = end = 0
    for name, visitor in ordered:
        first, last = visitor.offset, visitor.offset + visitor.size
        if (group and name not in isolated and group[0][0] not in isolated
                and (group[0][1].area_code, group[0][1].block) == (visitor.area_code, visitor.block)
                and first - end <= max_gap):
            group.append((name, visitor))
            end = max(end, last)
            continue
        if group:
            ranges.append(_range(group, start, end))
        group, start, end = [(name, visitor)], first, last
    if group:
        ranges.append(_range(group, start, end))
    return ranges


def _range(group: list[tuple[str, S7Visitor]], start: int, end: int) -> Range:
    visitor = group[0][1]
    return Range(visitor.area_code, visitor.block, start, end - start,
                 [(name, v, v.offset - start) for name, v in group])


def _cuts(fields: Sequence[tuple[str, S7Visitor, int]], size: int) -> list[int]:
    """Offsets inside the range that no value straddles."""
    spans = sorted((at, at + visitor.size) for _, visitor, at in fields)
    cuts: list[int] = []
    reach = 0
    for begin, finish in spans:
        if begin >= reach and 0 < begin < size and (not cuts or cuts[-1] != begin):
            cuts.append(begin)
        reach = max(reach, finish)
    return cuts


def pack(ranges: Sequence[Range], pdu: int) -> list[list[Item]]:
    """Ranges into requests in order, each answer within the PDU: a range that does not fit the room left is split
    where no value straddles the cut (inside a value only when that value alone is larger than an answer)."""
    limit, room = item_limit(pdu), answer_room(pdu)
    requests: list[list[Item]] = []
    items: list[Item] = []
    free = room
    for index, span in enumerate(ranges):
        at = 0
        while at < span.size:
            want = span.size - at
            space = free - ITEM_HEADER
            if len(items) < limit and item_cost(want) <= free:
                items.append(Item(index, at, want))
                free -= item_cost(want)
                break
            cut = _best_cut(span, at, space - (space & 1)) if len(items) < limit and space >= MIN_CHUNK else None
            if cut is None and not items:
                cut = at + (space - (space & 1))  # one value larger than a whole answer: split it anyway
            if cut is None:
                requests.append(items)
                items, free = [], room
                continue
            items.append(Item(index, at, cut - at))
            free -= item_cost(cut - at)
            at = cut
    if items:
        requests.append(items)
    return requests


def _best_cut(span: Range, at: int, space: int) -> int | None:
    """The farthest cut after `at` that leaves at most `space` bytes before it, None when there is none."""
    best = None
    for cut in span.cuts:
        if cut <= at:
            continue
        if cut - at > space:
            break
        best = cut
    return best
