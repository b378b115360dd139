"""merge_roots and Tree.apply: the three-way merge of two trees against a reference over nested
dicts, at the cost of the change (blocks read counted, never timed), and on real zarr arrays."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from conftest import required_module
from hypothesis import given, settings
from hypothesis import strategies as st

from ipldmount.blocks import Blockstore, MemoryBlockstore
from ipldmount.format import hamt, metadata
from ipldmount.format.diff import Change, diff_roots
from ipldmount.format.merge import MISSING, MergePlan, Take, merge_metadata, merge_roots
from ipldmount.ipld import cid as cids
from ipldmount.ipld import codec
from ipldmount.tree.model import Directory, File, Tree

Nested = dict[str, Any]  # a directory: name -> bytes (a file) or another dict (a directory)


# --- trees from nested dicts, and back ----------------------------------------------------


def build(store: Blockstore, tree: Nested) -> bytes:
    """The root CID of a fresh tree holding *tree* (an empty dict is an empty directory)."""
    writer = Tree(store)
    stack: list[tuple[str, Nested]] = [("", tree)]
    while stack:
        prefix, directory = stack.pop()
        if not directory and prefix:
            writer.makedirs(prefix)
        for name, value in directory.items():
            if isinstance(value, dict):
                stack.append((prefix + name + "/", value))
            else:
                writer.write_file(prefix + name, value)
    return writer.commit()


def read_nested(tree: Tree, directory: Directory | None = None) -> Nested:
    """What *tree* holds, as nested dicts (loaded a directory at a time)."""
    result: Nested = {}
    stack = [(tree.root if directory is None else directory, result)]
    while stack:
        current, into = stack.pop()
        for name, node in tree.entries(current).items():
            if isinstance(node, Directory):
                into[name] = {}
                stack.append((node, into[name]))
            else:
                assert isinstance(node, File)
                into[name] = tree.read_all(node)
    return result


def merged(store: Blockstore, base: bytes | None, ours: bytes, theirs: bytes) -> tuple[MergePlan, bytes]:
    """The plan, and the root of ours with its actions applied."""
    plan = merge_roots(store, base, ours, theirs)
    tree = Tree(store, ours)
    tree.apply(plan.actions)
    return plan, tree.commit()


# --- the reference: the rules of FORMAT.md 13 over nested dicts ------------------------------


def reference(base: Any, ours: Any, theirs: Any, path: str, conflicts: list[str]) -> Any:
    """The merge of three sides (bytes, dict or MISSING), conflicting paths added to *conflicts*."""
    if ours == theirs:
        return ours
    if base == ours:
        return theirs
    if base == theirs:
        return ours
    name = path.rsplit("/", 1)[-1]
    if isinstance(ours, dict) and isinstance(theirs, dict):
        start = base if isinstance(base, dict) else {}
        result = {}
        for key in sorted(start.keys() | ours.keys() | theirs.keys()):
            value = reference(
                start.get(key, MISSING),
                ours.get(key, MISSING),
                theirs.get(key, MISSING),
                path + "/" + key,
                conflicts,
            )
            if value is not MISSING:
                result[key] = value
        return result
    if isinstance(ours, bytes) and isinstance(theirs, bytes):
        if metadata.is_metadata_name(name):
            joined = reference_json(base if isinstance(base, bytes) else b"{}", ours, theirs)
            if joined is not None:
                return metadata.render(name, joined)
        conflicts.append(path.lstrip("/"))
        return ours
    directory = any(isinstance(side, dict) for side in (base, ours, theirs))
    conflicts.append(path.lstrip("/") + "/" * directory)
    return ours


class Clash(Exception):
    pass


def reference_json(base: bytes, ours: bytes, theirs: bytes) -> Any:
    try:
        sides = [json.loads(data) for data in (base, ours, theirs)]
    except ValueError:
        return None
    if not all(isinstance(side, dict) for side in sides):
        return None
    try:
        return json_merge(*sides)
    except Clash:
        return None


def json_merge(base: Any, ours: Any, theirs: Any) -> Any:
    def same(a: Any, b: Any) -> bool:
        return a is b if MISSING in (a, b) else json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    if same(ours, theirs) or same(base, theirs):
        return ours
    if same(base, ours):
        return theirs
    if not (isinstance(ours, dict) and isinstance(theirs, dict)):
        raise Clash
    start = base if isinstance(base, dict) else {}
    keys = start.keys() | ours.keys() | theirs.keys()
    values = {
        key: json_merge(start.get(key, MISSING), ours.get(key, MISSING), theirs.get(key, MISSING))
        for key in keys
    }
    return {key: value for key, value in values.items() if value is not MISSING}


# --- random trees and changes -------------------------------------------------------------

NAMES = ["a", "b", ".zattrs", "zarr.json"]
OBJECTS: list[Any] = [
    {},
    {"k": 1},
    {"k": 2},
    {"j": 1},
    {"k": 1, "j": 2},
    {"k": True},
    {"k": 1.0},
    {"k": {"x": 1}},
    {"attributes": {"k": 1}, "zarr_format": 3},
]


def render(name: str, value: Any, style: int) -> bytes:
    """JSON as zarr-python 2 writes it (inlined), compact, or two-space unsorted (raw blocks)."""
    if style == 0 and metadata.is_metadata_name(name):
        return metadata.render(name, value)
    if style == 1:
        return json.dumps(value).encode()
    return json.dumps(value, indent=2).encode()


paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3)
folders = st.lists(st.sampled_from(["a", "b"]), max_size=1)  # where attributes are set
file_data = st.one_of(
    st.sampled_from([b"", b"x", b"y"]),
    st.tuples(st.sampled_from(OBJECTS), st.integers(0, 2)),  # JSON, rendered by the name's rule
)
attribute_edits = st.tuples(
    st.just("attr"),
    folders,
    st.sampled_from([".zattrs", "zarr.json"]),
    st.sampled_from(["k", "j"]),
    st.sampled_from([1, 2, True, "s"]),
)
operations = st.one_of(
    st.tuples(st.just("write"), paths, file_data),
    st.tuples(st.just("delete"), st.lists(st.sampled_from(NAMES), min_size=1, max_size=2)),
    st.tuples(st.just("mkdir"), paths, st.dictionaries(st.sampled_from(NAMES), file_data, max_size=2)),
    attribute_edits,
)


def data_for(name: str, data: Any) -> bytes:
    return data if isinstance(data, bytes) else render(name, data[0], data[1])


def parent(tree: Nested, path: list[str]) -> Nested:
    """The directory holding *path*'s last name, made (replacing files in the way) as needed."""
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    return node


def change(tree: Nested, operation: tuple[Any, ...]) -> None:
    kind, path, *rest = operation
    if kind == "delete":
        node: Any = tree
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    elif kind == "write":
        parent(tree, path)[path[-1]] = data_for(path[-1], rest[0])
    elif kind == "mkdir":
        parent(tree, path)[path[-1]] = {name: data_for(name, data) for name, data in rest[0].items()}
    else:  # an attribute set in a .zattrs, or under "attributes" in a zarr.json
        name, key, setting = rest
        holder = parent(tree, [*path, name])
        value = attributes_of(holder.get(name))
        attributes = value.setdefault("attributes", {}) if name == "zarr.json" else value
        if not isinstance(attributes, dict):
            attributes = value["attributes"] = {}
        attributes[key] = setting
        holder[name] = render(name, value, 0)


def attributes_of(data: Any) -> dict[str, Any]:
    """The JSON object a metadata file holds ({} if it holds none)."""
    try:
        value = json.loads(data) if isinstance(data, bytes) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def changed(tree: Nested, ops: list[tuple[Any, ...]]) -> Nested:
    result = copy.deepcopy(tree)
    for operation in ops:
        change(result, operation)
    return result


def check_merge(base_ops: list[Any], ours_ops: list[Any], theirs_ops: list[Any], related: bool) -> None:
    """Three trees made by the operations, merged, against the reference."""
    base = changed({}, base_ops) if related else {}
    ours, theirs = changed(base, ours_ops), changed(base, theirs_ops)
    store = MemoryBlockstore()
    roots = [build(store, side) for side in (base, ours, theirs)]
    expected_conflicts: list[str] = []
    expected = reference(base, ours, theirs, "", expected_conflicts)
    plan, root = merged(store, roots[0] if related else None, roots[1], roots[2])
    assert plan.conflicts == sorted(expected_conflicts)
    if not expected_conflicts:
        assert read_nested(Tree(store, root)) == expected
        assert root == build(store, expected)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(operations, min_size=2, max_size=10),
    st.lists(operations, min_size=1, max_size=4),
    st.lists(operations, min_size=1, max_size=4),
    st.booleans(),
)
def test_merge_matches_a_reference_over_dicts(
    base_ops: list[Any], ours_ops: list[Any], theirs_ops: list[Any], related: bool
) -> None:
    check_merge(base_ops, ours_ops, theirs_ops, related)


top_metadata = st.sampled_from([".zattrs", "zarr.json"]).map(lambda name: [name])
metadata_edits = st.one_of(  # one directory, more keys: both sides often edit one file
    st.tuples(
        st.just("attr"),
        st.just([]),
        st.sampled_from([".zattrs", "zarr.json"]),
        st.sampled_from(["k", "j", "m", "n"]),
        st.sampled_from([1, 2, True, "s"]),
    ),
    st.tuples(st.just("write"), top_metadata, file_data),
    st.tuples(st.just("delete"), top_metadata),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(metadata_edits, min_size=1, max_size=6),
    st.lists(metadata_edits, min_size=1, max_size=3),
    st.lists(metadata_edits, min_size=1, max_size=3),
)
def test_metadata_merges_match_the_reference(
    base_ops: list[Any], ours_ops: list[Any], theirs_ops: list[Any]
) -> None:
    check_merge(base_ops, ours_ops, theirs_ops, True)


# --- the cases by hand --------------------------------------------------------------------


def zattrs(value: Any) -> bytes:
    return metadata.render(".zattrs", value)


def test_the_kinds_of_merge() -> None:
    store = MemoryBlockstore()
    base = {
        "keep": b"k",
        "ours": b"1",
        "theirs": b"1",
        "both": b"1",
        "gone": b"g",
        "d": {"x": b"x", "y": b"y"},
    }
    ours = {**base, "ours": b"2", "both": b"2", "d": {"x": b"X", "y": b"y"}, "new": {"f": b""}}
    theirs = {**base, "theirs": b"2", "both": b"3", "d": {"x": b"x", "y": b"Y"}}
    del theirs["gone"]
    plan, root = merged(store, build(store, base), build(store, ours), build(store, theirs))
    assert plan.conflicts == ["both"]
    assert [(take.path, take.value is MISSING) for take in plan.actions] == [
        ("d/y", False),
        ("gone", True),
        ("theirs", False),
    ]
    expected = {**ours, "theirs": b"2", "d": {"x": b"X", "y": b"Y"}}  # "both" as ours had it
    del expected["gone"]
    assert read_nested(Tree(store, root)) == expected


def test_a_removal_against_a_change_conflicts_at_the_directory() -> None:
    store = MemoryBlockstore()
    base = {"arr": {"0": b"a", "1": b"b", "sub": {"2": b"c"}}, "f": b"f"}
    ours = {"f": b"f"}
    theirs = {"arr": {"0": b"a", "1": b"b", "sub": {"2": b"C"}}, "f": b"F"}
    plan = merge_roots(store, build(store, base), build(store, ours), build(store, theirs))
    assert plan.conflicts == ["arr/"]  # the directory, not each changed path beneath it
    assert plan.actions == [Take("f", codec.Link(plan.actions[0].value.cid))]
    ours_changed = {**base, "f": b"F"}
    plan = merge_roots(store, build(store, base), build(store, ours_changed), build(store, {}))
    assert plan.conflicts == ["f"]  # changed against removed
    assert plan.actions == [Take("arr", MISSING)]  # removed against unchanged: the removal stands


def test_a_file_against_a_directory_conflicts() -> None:
    store = MemoryBlockstore()
    base = {"x": b"1"}
    plan = merge_roots(store, build(store, base), build(store, {"x": {"in": b""}}), build(store, {"x": b"2"}))
    assert plan.conflicts == ["x/"]


def test_metadata_merges_key_by_key_and_renders_as_zarr_writes_it() -> None:
    store = MemoryBlockstore()
    base = {".zattrs": zattrs({"a": 1, "b": {"x": 1, "y": 1}}), "zarr.json": b'{"attributes": {}}'}
    ours = {".zattrs": zattrs({"a": 2, "b": {"x": 2, "y": 1}}), "zarr.json": b'{"attributes": {"o": 1}}'}
    theirs = {
        ".zattrs": json.dumps({"a": 1, "b": {"x": 1, "y": 3}, "c": None}).encode(),  # compact: a raw block
        "zarr.json": b'{"attributes": {"t": 2}, "node_type": "group"}',
    }
    plan, root = merged(store, build(store, base), build(store, ours), build(store, theirs))
    assert plan.conflicts == []
    tree = Tree(store, root)
    assert tree.read_file(".zattrs") == zattrs({"a": 2, "b": {"x": 2, "y": 3}, "c": None})
    joined = {"attributes": {"o": 1, "t": 2}, "node_type": "group"}
    assert tree.read_file("zarr.json") == metadata.render("zarr.json", joined)
    assert type(codec.decode(store.get(root))["zarr.json"]) is dict  # inline, as zarr writes it


def test_json_values_are_compared_by_type() -> None:
    """1, 1.0 and true are three values: Python's == alone would miss theirs's change."""
    store = MemoryBlockstore()
    base = build(store, {".zattrs": zattrs({"k": 1})})
    ours = build(store, {".zattrs": zattrs({"k": 1, "j": 2})})
    theirs = build(store, {".zattrs": zattrs({"k": True})})
    assert list(diff_roots(store, base, theirs)) == [Change("modified", ".zattrs")]
    plan, root = merged(store, base, ours, theirs)
    assert plan.conflicts == []
    assert Tree(store, root).read_file(".zattrs") == zattrs({"j": 2, "k": True})
    clash = merge_roots(store, base, theirs, build(store, {".zattrs": zattrs({"k": 1.0})}))
    assert clash.conflicts == [".zattrs"]


def test_merge_metadata_refuses_what_is_not_an_object() -> None:
    assert merge_metadata(".zattrs", None, b"[]", b"{}") is None
    assert merge_metadata(".zattrs", b"nope", b"{}", b'{"a": 1}') is None
    assert merge_metadata(".zattrs", None, b'{"a": 1}', b'{"b": 2}') == zattrs({"a": 1, "b": 2})
    assert merge_metadata(".zattrs", None, b'{"a": 1}', b'{"a": 2}') is None


def test_unrelated_histories_merge_from_the_empty_tree() -> None:
    store = MemoryBlockstore()
    ours = {"a": b"1", "same": b"s", "d": {"x": b"x"}, ".zattrs": zattrs({"o": 1})}
    theirs = {"b": b"2", "same": b"s", "d": {"y": b"y"}, ".zattrs": zattrs({"t": 1})}
    plan, root = merged(store, None, build(store, ours), build(store, theirs))
    assert plan.conflicts == []
    expected = {
        "a": b"1",
        "b": b"2",
        "same": b"s",
        "d": {"x": b"x", "y": b"y"},
        ".zattrs": zattrs({"o": 1, "t": 1}),
    }
    assert root == build(store, expected)
    clash = merge_roots(store, None, build(store, {"f": b"1"}), build(store, {"f": b"2"}))
    assert clash.conflicts == ["f"]


def test_the_same_change_on_both_sides_is_no_action() -> None:
    store = MemoryBlockstore()
    base = build(store, {"a": b"1", "d": {"x": b"x"}, "gone": b""})
    after = {"a": b"2", "d": {"x": b"x", "y": b"y"}, ".zattrs": zattrs({"k": 1})}
    assert merge_roots(store, base, build(store, after), build(store, after)) == MergePlan([], [])
    changed_twice = {"a": b"2", "d": {"x": b"x", "z": b""}, "gone": b""}
    plan = merge_roots(store, base, build(store, {**changed_twice, "n": b""}), build(store, changed_twice))
    assert plan == MergePlan([], [])


def test_a_change_of_form_alone_is_no_change() -> None:
    """A directory crossing the sharding threshold on one side holds its metadata as a raw block
    and its small subdirectory as a link: the same bytes, so the other side's removals stand."""
    store = MemoryBlockstore()
    chunks = {f"{i:06d}": b"" for i in range(20_000)}  # a plain node, just
    base = {"arr": {**chunks, ".zattrs": zattrs({"a": 1}), "sub": {"x": b"x"}}}
    ours = copy.deepcopy(base)
    ours["arr"].update({f"{i:06d}": b"" for i in range(20_000, 25_000)})  # now sharded
    theirs = copy.deepcopy(base)
    del theirs["arr"][".zattrs"], theirs["arr"]["sub"]
    theirs["arr"]["000007"] = b"changed"
    roots = [build(store, side) for side in (base, ours, theirs)]
    arr = [codec.decode(store.get(root))["arr"] for root in roots]
    assert hamt.is_root(codec.decode(store.get(arr[1].cid))) and not isinstance(arr[0], codec.Link)
    plan, root = merged(store, *roots)
    assert plan.conflicts == []
    assert [take.path for take in plan.actions] == ["arr/.zattrs", "arr/000007", "arr/sub"]
    expected = copy.deepcopy(ours)
    del expected["arr"][".zattrs"], expected["arr"]["sub"]
    expected["arr"]["000007"] = b"changed"
    assert root == build(store, expected)


DEEP = "/".join(["d"] * 1100)


def test_a_tree_1100_directories_deep_merges() -> None:
    store = MemoryBlockstore()
    writer = Tree(store)
    writer.write_file(f"{DEEP}/a", b"1")
    writer.write_file(f"{DEEP}/b", b"1")
    base = writer.commit()
    sides = []
    for name in ("a", "b"):
        tree = Tree(store, base)
        tree.write_file(f"{DEEP}/{name}", b"2")
        sides.append(tree.commit())
    plan, root = merged(store, base, *sides)
    assert plan.conflicts == [] and [take.path for take in plan.actions] == [f"{DEEP}/b"]
    tree = Tree(store, root)
    assert tree.read_file(f"{DEEP}/a") == tree.read_file(f"{DEEP}/b") == b"2"


# --- applying ----------------------------------------------------------------------------


def test_put_entry_and_remove_entry() -> None:
    store = MemoryBlockstore()
    value = codec.decode(store.get(build(store, {"d": {"x": b"x", ".zattrs": zattrs({})}, "f": b"f"})))
    tree = Tree(store, build(store, {"d": b"a file", "e": {"deep": {"f": b""}}, "g": b"g"}))
    tree.put_entry("d", value["d"])  # an inline directory replaces a file
    tree.put_entry("new/parents/f", value["f"])  # parents made
    tree.put_entry("g", b"bytes")
    tree.put_entry(".zattrs", zattrs({"a": 1}))
    tree.remove_entry("e")  # a whole directory
    expected = {
        "d": {"x": b"x", ".zattrs": zattrs({})},
        "new": {"parents": {"f": b"f"}},
        "g": b"bytes",
        ".zattrs": zattrs({"a": 1}),
    }
    assert read_nested(tree) == expected
    assert tree.commit() == build(store, expected)
    tree.put_entry("d", value["f"])  # a directory replaced by a file
    expected["d"] = b"f"
    assert tree.commit() == build(store, expected)


# --- sharded directories: the cost of the change --------------------------------------------


class CountingStore(MemoryBlockstore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, cid: bytes) -> bytes:
        self.reads += 1
        return super().get(cid)

    def read(self, cid: bytes, offset: int = 0, size: int = -1) -> bytes:
        self.reads += 1
        return super().read(cid, offset, size)


CHUNKS = 30_000  # above the sharding threshold (FORMAT.md 9.8)


def sharded(store: Blockstore, changes: dict[str, bytes]) -> bytes:
    """A tree of ``arr/`` with CHUNKS small files, *changes* written over them."""
    tree = Tree(store)
    directory = tree.makedirs("arr")
    for i in range(CHUNKS):
        name = str(i)
        tree.create(directory, name, tree.store_bytes(changes.get(name, i.to_bytes(4, "big"))))
    return tree.commit()


def test_one_chunk_each_in_a_sharded_directory_costs_a_few_nodes() -> None:
    store = CountingStore()
    base = sharded(store, {})
    sides = []
    for name, data in (("5", b"ours"), ("20000", b"theirs")):
        tree = Tree(store, base)
        tree.write_file(f"arr/{name}", data)
        sides.append(tree.commit())
    assert hamt.is_root(codec.decode(store.get(codec.decode(store.get(base))["arr"].cid)))
    store.reads = 0
    plan = merge_roots(store, base, *sides)
    assert store.reads < 20, f"{store.reads} blocks read to merge two chunks among {CHUNKS}"
    assert plan.conflicts == [] and [take.path for take in plan.actions] == ["arr/20000"]
    store.reads = 0
    tree = Tree(store, sides[0])
    tree.apply(plan.actions)
    root = tree.commit()
    assert store.reads < 20, f"{store.reads} blocks read to apply one chunk among {CHUNKS}"
    assert root == sharded(store, {"5": b"ours", "20000": b"theirs"})
    clash = Tree(store, base)
    clash.write_file("arr/5", b"theirs too")
    assert merge_roots(store, base, sides[0], clash.commit()).conflicts == ["arr/5"]


# --- zarr ------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_chunks_and_attributes_of_both_sides_merge(zarr_format: int) -> None:
    zarr = required_module("zarr")
    np = required_module("numpy")
    from ipldmount.adapters.zarr_store import IPLDStore  # after zarr: skipped (locally) without it

    store = MemoryBlockstore()

    def write(root: bytes | None, change: Any) -> bytes:
        with IPLDStore(store, root) as zarr_store:
            change(zarr_store)
            return cids.parse_cid(zarr_store.freeze())

    def create(zarr_store: Any) -> None:
        group = zarr.open_group(zarr_store, mode="w", zarr_format=zarr_format)
        group.create_array("arr", shape=(100,), chunks=(10,), dtype="i4", fill_value=0)

    def side(region: slice, number: int, key: str, value: Any) -> Any:
        def edit(zarr_store: Any) -> None:
            array = zarr.open_array(zarr_store, path="arr", mode="r+", zarr_format=zarr_format)
            array[region] = number
            array.attrs[key] = value

        return edit

    base = write(None, create)
    ours = write(base, side(slice(0, 10), 1, "ours", "a"))
    theirs = write(base, side(slice(50, 70), 2, "theirs", [1, 2]))
    plan, root = merged(store, base, ours, theirs)
    assert plan.conflicts == []
    assert any(isinstance(take.value, bytes) for take in plan.actions)  # the attributes, merged
    with IPLDStore(store, root, read_only=True) as zarr_store:
        array = zarr.open_array(zarr_store, path="arr", mode="r", zarr_format=zarr_format)
        expected = np.zeros(100, "i4")
        expected[0:10], expected[50:70] = 1, 2
        assert (array[:] == expected).all()
        assert array.attrs.asdict() == {"ours": "a", "theirs": [1, 2]}
    metadata_file = "arr/.zattrs" if zarr_format == 2 else "arr/zarr.json"
    clash = write(base, side(slice(90, 100), 3, "ours", "b"))
    assert merge_roots(store, base, ours, clash).conflicts == [metadata_file]
