"""A commit graph drawn beside a log, the way ``git log --graph`` draws one, for ``ipldmount log``.

Pure text layout, nothing but the standard library: the command knows its commits' ids and parents,
this module knows where each line goes. Columns are two characters wide (a line at even offsets, a
diagonal or a space between). What the drawing uses:

* ``*`` a commit; ``|`` a line going down; ``\\`` and ``/`` a line moving one column right or left.
* A merge opens a column per further parent (``|\\``); lines waiting for the same parent join
  (``|/``). A parent missing from the list (history not in the store) gets no line at all.
* A line that must join another across other lines turns at ``'``, runs left on ``-``, crosses the
  lines between (``-|-``) and joins where the run meets a line from one side only (``|-``).
  ``git`` draws that with ``_`` and ``/``, which can be read as joining the lines it crosses; the
  ``-|-`` form cannot, and it takes one row however far the line runs.

Every row holds exactly one ``*``; every line leaves a commit and ends at one of its parents' rows.
Time and memory stay linear in commits times open columns: a commit adds a row per extra parent and
a few more for lines that join, each as wide as the open columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import NamedTuple

# What a column's line waits for: a parent's id; None for a gap (a line ended there).
Slot = str | None
# One line's step through a connector row: (its column above, its column below).
Move = tuple[int, int]

_GLYPHS = {-1: "/", 0: "|", 1: "\\"}


class GraphRow(NamedTuple):
    """One commit's share of the drawing, in the order the commits came.

    ``has_parent`` says whether a line leaves the commit downwards: ``continuation`` needs it, and
    the prefix cannot tell (a root looks like any other commit there).
    """

    prefix: str  # the node row: print the commit's first line after it
    connectors: list[str]  # rows to print on their own after the commit's lines (no trailing spaces)
    has_parent: bool  # a parent of the commit is drawn (it comes later in the list)


def graph_rows(commits: Sequence[tuple[str, Sequence[str]]]) -> Iterator[GraphRow]:
    """For commits given newest first (each: its id and its parents' ids, first parent first), yield
    for each commit its :class:`GraphRow`: the node prefix (``* ``, ``| * ``, ``*   `` for a merge),
    the connector lines to print after it before the next commit, and whether it has a drawn parent.

    A parent id that does not come later in the list (never a commit here, e.g. history not in the
    store) is a line that ends: nothing is drawn for it. A commit no line waits for (a branch's tip)
    opens a column on the right. The first parent keeps the commit's column.
    """
    remaining = Counter(commit for commit, _ in commits)
    columns: list[str] = []
    for n, (commit, parents) in enumerate(commits):
        remaining[commit] -= 1
        drawn = _drawn_parents(parents, remaining)
        if commit not in columns:
            columns.append(commit)
        col = columns.index(commit)
        prefix = _node_row(len(columns), col, len(drawn))
        slots, opening = _open_parents(columns, col, drawn)
        settling, columns = _settle(slots)
        rows = opening + settling
        if not drawn and not rows and _tip_follows(commits, n, columns):
            rows = [_draw_moves([(k, k) for k in range(len(columns))])]
        yield GraphRow(prefix, rows, bool(drawn))


def continuation(prefix: str, has_parent: bool) -> str:
    """The prefix for a commit's further lines (its message, tree, time): the node's ``*`` replaced
    by ``|`` if the commit has a drawn parent (its line goes on down), else by a space; the other
    columns as they are. Same width as *prefix*, so the commit's lines stay aligned."""
    return prefix.replace("*", "|" if has_parent else " ")


def _tip_follows(commits: Sequence[tuple[str, Sequence[str]]], n: int, columns: list[str]) -> bool:
    """Whether the commit after the *n*-th opens a column: after one whose line ended on the right, it
    takes that very column, and ``*`` right above ``*`` reads as child and parent; a connector row
    with nothing in that column keeps them apart."""
    return n + 1 < len(commits) and commits[n + 1][0] not in columns


def _drawn_parents(parents: Sequence[str], remaining: Counter[str]) -> list[str]:
    """The parents a line is drawn to, each once, first parent first: only those still to come, since
    a line to one outside the list (or, in a misordered list, already drawn) would lead nowhere."""
    return list(dict.fromkeys(parent for parent in parents if remaining[parent] > 0))


def _node_row(width: int, col: int, parents: int) -> str:
    """``| * | `` padded by a column per extra parent, so the commit's text lines up to the right of
    the columns its merge opens (``*   `` then ``|\\``)."""
    cells = "".join("* " if k == col else "| " for k in range(width))
    return cells + "  " * max(parents - 1, 0)


def _open_parents(columns: list[str], col: int, parents: list[str]) -> tuple[list[Slot], list[str]]:
    """Replace the commit's column by its parents' lines: the first keeps the column, each further one
    takes a new column just right of it, one connector row each (``|\\``, then ``| |\\`` for an
    octopus); the columns to the right step aside as they do. A commit with no drawn parent leaves a
    gap, closed while settling."""
    right = len(columns) - col - 1
    rows = [_draw_moves(_fan_out(col + step - 1, right)) for step in range(1, len(parents))]
    opened: list[Slot] = [*parents] if parents else [None]
    return [*columns[:col], *opened, *columns[col + 1 :]], rows


def _fan_out(bundle: int, right: int) -> list[Move]:
    """One row of a merge opening its parents: the line at *bundle* still carries the parents not yet
    placed; it leaves one below and sends the rest one column right, pushing the *right* lines after it."""
    stay = [(k, k) for k in range(bundle + 1)]
    pushed = [(k, k + 1) for k in range(bundle + 1, bundle + 1 + right)]
    return [*stay, (bundle, bundle + 1), *pushed]


def _draw_moves(moves: list[Move]) -> str:
    """A row of single-column steps: ``|`` at 2k for a line staying in k, ``\\`` or ``/`` between the
    columns for one moving; a move's glyph sits at offset above + below."""
    glyphs = {start + end: _GLYPHS[end - start] for start, end in moves}
    return "".join(glyphs.get(offset, " ") for offset in range(max(glyphs, default=-1) + 1))


def _settle(slots: list[Slot]) -> tuple[list[str], list[str]]:
    """Connector rows until every line waits for a different commit and no gap is left: lines for the
    same parent join now rather than at the parent, so a commit's row has a single line into it."""
    rows: list[str] = []
    slots = _trimmed(slots)
    while None in slots or len(set(slots)) < len(slots):
        row, slots = _travel(slots) or _shift(slots)
        rows.append(row)
        slots = _trimmed(slots)
    return rows, [line for line in slots if line is not None]


def _trimmed(slots: list[Slot]) -> list[Slot]:
    """Without the gaps on the right: nothing has to move to close them."""
    end = len(slots)
    while end and slots[end - 1] is None:
        end -= 1
    return slots[:end]


def _travel(slots: list[Slot]) -> tuple[str, list[Slot]] | None:
    """A row in which lines join a line for the same parent two or more columns to their left, each
    running left on ``-`` across what lies between; None if no line needs to. The runs never overlap,
    so every crossing is a ``-|-`` and every join a ``|-``."""
    runs = _runs(slots)
    if not runs:
        return None
    chars = list(" ".join(" " if line is None else "|" for line in slots))
    after = list(slots)
    for target, source in runs:
        for offset in range(2 * target + 1, 2 * source):
            if chars[offset] == " ":
                chars[offset] = "-"
        chars[2 * source] = "'"
        after[source] = None
    return "".join(chars), after


def _runs(slots: list[Slot]) -> list[Move]:
    """(target, source) for lines whose nearest line to the left for the same parent is two or more
    columns away: the nearest, so no run crosses a line it could have joined; leftmost first, each
    starting right of the last one's end (the rest wait for the next row)."""
    nearest: dict[str, int] = {}
    runs: list[Move] = []
    for source, line in enumerate(slots):
        if line is None:
            continue
        target = nearest.get(line)
        if target is not None and source - target >= 2 and (not runs or target > runs[-1][1]):
            runs.append((target, source))
        nearest[line] = source
    return runs


def _shift(slots: list[Slot]) -> tuple[str, list[Slot]]:
    """A row in which every line left of where it belongs steps one column left, where that column is
    free below or holds a line for the same parent (a join, ``|/``); the others go straight down.
    Where a line belongs: its parent's rank among the lines, first ones first (git's order)."""
    rank = {line: n for n, line in enumerate(dict.fromkeys(s for s in slots if s is not None))}
    moves: list[Move] = []
    below: list[Slot] = []
    for col, line in enumerate(slots):
        if line is None:
            continue
        end = col - 1 if rank[line] < col and _open_to(below, col - 1, line) else col
        moves.append((col, end))
        below.extend([None] * (end + 1 - len(below)))
        below[end] = line
    return _draw_moves(moves), below


def _open_to(below: list[Slot], col: int, line: str) -> bool:
    """Whether *line* may end this row in *col*: nothing is there yet, or a line for the same parent."""
    return col >= len(below) or below[col] in (None, line)
