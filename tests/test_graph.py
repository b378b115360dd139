"""The commit graph of ``ipldmount log``: literal drawings of the usual shapes, and random histories
read back by a reader that knows only the glyphs, each commit's lines leading to its parents."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.adapters.cli.graph import GraphRow, continuation, graph_rows

History = list[tuple[str, list[str]]]


def drawn(history: History, further_lines: int = 0) -> list[str]:
    """The log as the command prints it: each commit's node row with its id, *further_lines*
    continuation rows, then its connectors."""
    lines: list[str] = []
    for (commit, _), row in zip(history, graph_rows(history), strict=True):
        lines.append(row.prefix + commit)
        lines += [continuation(row.prefix, row.has_parent) + "..."] * further_lines
        lines += row.connectors
    return lines


def test_linear_history_is_a_column_of_stars() -> None:
    history: History = [("c", ["b"]), ("b", ["a"]), ("a", [])]
    assert drawn(history) == ["* c", "* b", "* a"]
    assert [row.connectors for row in graph_rows(history)] == [[], [], []]
    assert drawn(history, further_lines=1) == ["* c", "| ...", "* b", "| ...", "* a", "  ..."]


def test_one_merge() -> None:
    history: History = [("m", ["a2", "b"]), ("b", ["a1"]), ("a2", ["a1"]), ("a1", [])]
    assert drawn(history) == [
        "*   m",
        "|\\",
        "| * b",
        "* | a2",
        "|/",
        "* a1",
    ]
    assert_reads_back(history)


def test_a_merge_keeps_its_text_aligned_past_the_columns_it_opens() -> None:
    history: History = [("m", ["a", "b"]), ("b", ["a"]), ("a", [])]
    assert drawn(history, further_lines=1) == [
        "*   m",
        "|   ...",
        "|\\",
        "| * b",
        "| | ...",
        "|/",
        "* a",
        "  ...",
    ]


def test_octopus_merge() -> None:
    history: History = [("o", ["a", "b", "c"]), ("c", ["r"]), ("b", ["r"]), ("a", ["r"]), ("r", [])]
    assert drawn(history) == [
        "*     o",
        "|\\",
        "| |\\",
        "| | * c",
        "| * | b",
        "| |/",
        "* | a",
        "|/",
        "* r",
    ]
    assert_reads_back(history)


def test_two_branches_merged_several_times() -> None:
    history: History = [
        *(("m3", ["m2", "f3"]), ("f3", ["f2"])),
        *(("m2", ["m1", "f2"]), ("f2", ["f1"])),
        *(("m1", ["m0", "f1"]), ("f1", ["m0"])),
        ("m0", []),
    ]
    assert drawn(history) == [
        "*   m3",
        "|\\",
        "| * f3",
        "* |   m2",
        "|\\ \\",
        "| |/",
        "| * f2",
        "* |   m1",
        "|\\ \\",
        "| |/",
        "| * f1",
        "|/",
        "* m0",
    ]
    assert_reads_back(history, 0)


def test_criss_cross_runs_a_line_across_the_others() -> None:
    history: History = [
        ("f", ["m1", "m2"]),
        ("m1", ["a", "b"]),
        ("m2", ["b", "a"]),
        ("a", ["base"]),
        ("b", ["base"]),
        ("base", []),
    ]
    assert drawn(history) == [
        "*   f",
        "|\\",
        "* |   m1",
        "|\\ \\",
        "| | *   m2",
        "| | |\\",
        "|-|-|-'",
        "| |/",
        "* | a",
        "| * b",
        "|/",
        "* base",
    ]
    assert_reads_back(history, 2)


def test_a_missing_parent_draws_nothing() -> None:
    history: History = [("b", ["a", "elsewhere"]), ("a", ["gone"])]
    assert drawn(history, further_lines=1) == ["* b", "| ...", "* a", "  ..."]
    assert [row.has_parent for row in graph_rows(history)] == [True, False]


def test_a_column_whose_line_ends_closes_up() -> None:
    history: History = [("t", ["a"]), ("s", ["r"]), ("w", ["b"]), ("r", ["gone"]), ("a", []), ("b", [])]
    assert drawn(history) == [
        "* t",
        "| * s",
        "| | * w",
        "| * | r",
        "|  /",
        "* | a",
        " /",
        "* b",
    ]
    assert_reads_back(history, 0)


def test_a_root_above_a_tip_in_its_column_is_kept_apart() -> None:
    history: History = [("t", ["a"]), ("r", []), ("u", ["a"]), ("a", []), ("z", [])]
    assert drawn(history) == ["* t", "| * r", "|", "| * u", "|/", "* a", "", "* z"]
    assert_reads_back(history, 0)


def test_continuation_keeps_the_other_columns() -> None:
    assert continuation("| *   ", True) == "| |   "
    assert continuation("| * | ", False) == "|   | "


def test_rows_are_typed_tuples() -> None:
    (row,) = graph_rows([("a", [])])
    assert row == GraphRow("* ", [], False)
    prefix, connectors, has_parent = row
    assert (prefix, connectors, has_parent) == ("* ", [], False)


# --- reading a drawing back ---------------------------------------------------------------------

Edge = tuple[int, int]  # a line segment of a row: (its column at the row's top, at its bottom)


def graph_lines(history: History, further_lines: int) -> list[tuple[str, str | None]]:
    """What :func:`drawn` prints, as (graph part, commit of a node row or None)."""
    lines: list[tuple[str, str | None]] = []
    for (commit, _), row in zip(history, graph_rows(history), strict=True):
        lines.append((row.prefix, commit))
        lines += [(continuation(row.prefix, row.has_parent), None)] * further_lines
        lines += [(connector, None) for connector in row.connectors]
    return lines


def _run_end(row: str, turn: int) -> int:
    """The column a line turning left at offset *turn* (``'``) joins: run left over ``-`` and
    crossings (``-|-``) to the ``|`` the run meets from its right side only."""
    offset = turn - 1
    assert offset > 0 and row[offset] == "-", f"{row!r}: a turn with no run"
    while offset > 0 and (row[offset] == "-" or row[offset - 1] == "-"):
        assert row[offset] in "-|", f"{row!r}: {row[offset]!r} inside a run"
        offset -= 1
    assert row[offset] == "|" and offset % 2 == 0, f"{row!r}: a run that joins no line"
    return offset // 2


def connector_edges(row: str) -> list[Edge]:
    """Every line segment of a connector or continuation row; fails on a glyph out of place."""
    edges: list[Edge] = []
    in_runs: set[int] = set()
    for offset, glyph in enumerate(row):
        col, between = divmod(offset, 2)
        if glyph in " -":
            continue
        assert glyph in ("\\/" if between else "|'"), f"{row!r}: {glyph!r} at offset {offset}"
        if glyph == "'":
            end = _run_end(row, offset)
            in_runs.update(range(2 * end + 1, offset))
            edges.append((col, end))
        else:
            edges.append({"|": (col, col), "\\": (col, col + 1), "/": (col + 1, col)}[glyph])
    assert {k for k, glyph in enumerate(row) if glyph == "-"} <= in_runs, f"{row!r}: a dash outside a run"
    return edges


def node_edges(prefix: str, commit: str) -> tuple[int, list[Edge]]:
    """A node row's column and its straight lines; fails unless it holds one node and lines only."""
    assert prefix.count("*") == 1 and set(prefix) <= set("*| "), f"{prefix!r} ({commit})"
    assert prefix.index("*") % 2 == 0 and all(prefix[k] == " " for k in range(1, len(prefix), 2))
    return prefix.index("*") // 2, [(k // 2, k // 2) for k, glyph in enumerate(prefix) if glyph == "|"]


def read_parents(lines: Sequence[tuple[str, str | None]]) -> dict[str, set[str]]:
    """Each commit's parents as the drawing shows them: the nodes its lines lead to. Fails on a line
    that leads nowhere, or one that no commit's lines reach (it starts from nothing)."""
    nodes: list[tuple[str, int] | None] = []
    edges: list[list[Edge]] = []
    for graph, commit in lines:
        if commit is None:
            nodes.append(None)
            edges.append(connector_edges(graph))
        else:
            col, straight = node_edges(graph, commit)
            nodes.append((commit, col))
            edges.append(straight)
    used: set[tuple[int, Edge]] = set()
    parents = {node[0]: _follow(nodes, edges, n, used) for n, node in enumerate(nodes) if node is not None}
    every = {(n, edge) for n, row in enumerate(edges) for edge in row}
    assert every <= used, f"lines from no commit: {sorted(every - used)}"
    return parents


def _follow(
    nodes: list[tuple[str, int] | None], edges: list[list[Edge]], start: int, used: set[tuple[int, Edge]]
) -> set[str]:
    """The nodes reached going down from the node of row *start*; marks the segments walked."""
    node = nodes[start]
    assert node is not None
    reached: set[str] = set()
    frontier = {node[1]} if start + 1 < len(nodes) else set()  # the last row: nothing below
    for n in range(start + 1, len(nodes)):
        here = nodes[n]
        if here is not None and here[1] in frontier:
            reached.add(here[0])
            frontier.discard(here[1])
        below: set[int] = set()
        for top in frontier:
            leaving = [edge for edge in edges[n] if edge[0] == top]
            assert leaving or n == start + 1, f"a line ends in row {n}, column {top}"
            used.update((n, edge) for edge in leaving)
            below.update(bottom for _, bottom in leaving)
        frontier = below
        if not frontier:
            break
    assert not frontier, "a line runs off the bottom"
    return reached


def assert_reads_back(history: History, further_lines: int = 1) -> None:
    """The drawing shows each commit's lines leading to exactly its parents that come later."""
    later = [{commit for commit, _ in history[n + 1 :]} for n in range(len(history))]
    expected = {commit: set(parents) & later[n] for n, (commit, parents) in enumerate(history)}
    lines = graph_lines(history, further_lines)
    assert read_parents(lines) == expected, "\n" + "\n".join(graph for graph, _ in lines)


def test_the_reader_catches_wrong_drawings() -> None:
    history: History = [("m", ["a2", "b"]), ("b", ["a1"]), ("a2", ["a1"]), ("a1", [])]
    good = graph_lines(history, 0)
    assert read_parents(good) == {"m": {"a2", "b"}, "b": {"a1"}, "a2": {"a1"}, "a1": set()}
    planted = {
        "a line from nothing": [(graph.replace("\\", "/"), commit) for graph, commit in good],
        "lines joined before b": [*good[:2], ("|/", None), *good[2:4], *good[5:]],
        "a line leading nowhere": [*good[:4], ("| |", None), ("|", None), *good[5:]],
        "a2 above a1 with b's line not joined": [*good[:4], *good[5:]],
        "a run joining nothing": [*good[:5], ("--'", None), *good[5:]],
    }
    for name, lines in planted.items():
        assert not reads_as(lines, read_parents(good)), name


def reads_as(lines: Sequence[tuple[str, str | None]], parents: dict[str, set[str]]) -> bool:
    try:
        return read_parents(lines) == parents
    except AssertionError:
        return False


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Commits newest first, each with 0-3 parents among older ones or outside the list."""
    count = draw(st.integers(1, 25))
    history: History = []
    for n in range(count):
        older = [f"c{k}" for k in range(n + 1, count)] + ["gone1", "gone2"]
        history.append((f"c{n}", draw(st.lists(st.sampled_from(older), max_size=3))))
    return history


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 2))
def test_random_histories_read_back(history: History, further_lines: int) -> None:
    rows = list(graph_rows(history))
    assert len(rows) == len(history)
    assert [row.prefix.count("*") for row in rows] == [1] * len(history)
    assert all("*" not in connector for row in rows for connector in row.connectors)
    # A few rows per parent, whatever the width: the drawing stays linear in commits times columns.
    for row, (_, parents) in zip(rows, history, strict=True):
        assert len(row.connectors) <= 3 * len(parents) + 1
    assert_reads_back(history, further_lines)
