"""The gateway's pure rules (ipldmount/adapters/serve/negotiation.py), each from a string to a value.

No server and no store: what a request asks for (Accept, format, CAR options, entity-bytes,
Range, path segments) and how the answer is labelled (Etag, Content-Location,
Content-Disposition, Content-Type), table by table. tests/test_gateway.py checks the same rules
end to end, over HTTP.
"""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import urlsplit

import pytest

from ipldmount.adapters.serve.negotiation import (
    CAR_TYPE,
    RAW_TYPE,
    SEND_CHUNK,
    Ask,
    BadRequest,
    _accepted,
    byte_range,
    car_etag,
    car_options,
    coalesce,
    content_disposition,
    content_location,
    content_type_for,
    declares_body,
    entity_range,
    read_ahead,
    response_kind,
    segment_name,
)
from ipldmount.ipld import cid as cids

ROOT = cids.block_cid(cids.RAW, b"hello")
ROOT_TEXT = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def _ask(query: dict[str, str] | None = None, names: list[str] | None = None, kind: str = "car") -> Ask:
    return Ask(ROOT, names or [], kind, False, query or {})


@pytest.mark.parametrize(
    ("accept", "ranked"),
    [
        ("", []),
        ("text/html", [("text/html", {})]),
        ("a/x;q=0.5, b/y, c/z;q=0.9", [("b/y", {}), ("c/z", {}), ("a/x", {})]),  # by q, then order
        ("a/x;q=0.5, b/y;q=0.5", [("a/x", {}), ("b/y", {})]),  # ties keep the header's order
        ("a/x;q=0, b/y", [("b/y", {})]),  # q=0: not acceptable at all
        ("a/x;q=high", [("a/x", {})]),  # an unreadable q counts as 1
        ("A/X ; Version = 1 ;q=1", [("a/x", {"version": "1"})]),  # media and keys lowercased
        (
            f"{CAR_TYPE}; version=1; order=dfs; dups=y",
            [(CAR_TYPE, {"version": "1", "order": "dfs", "dups": "y"})],
        ),
        (" , ,a/x,", [("a/x", {})]),  # empty items skipped
    ],
)
def test_accept_is_ranked_by_q_then_order(accept: str, ranked: list[tuple[str, dict[str, str]]]) -> None:
    assert _accepted(accept) == ranked


@pytest.mark.parametrize(
    ("format_", "accept", "expected"),
    [
        (None, "", ("content", False, {})),
        (None, "*/*", ("content", False, {})),
        (None, f"{RAW_TYPE};q=0", ("content", False, {})),  # q=0 leaves nothing asked for
        (None, "text/html,application/xhtml+xml", ("content", False, {})),
        (None, RAW_TYPE, ("raw", True, {})),
        (None, f"{CAR_TYPE};dups=y", ("car", True, {"dups": "y"})),
        (None, f"{CAR_TYPE};q=0.5, {RAW_TYPE}", ("raw", True, {})),  # q decides, not order
        (None, f"{CAR_TYPE};version=2, {RAW_TYPE};q=0.1", ("raw", True, {})),  # a CAR not made: next
        (None, f"application/vnd.ipld.dag-json, {CAR_TYPE};q=0.2", ("car", True, {})),  # not served: next
        ("raw", "", ("raw", False, {})),
        ("car", f"{CAR_TYPE};dups=y", ("car", False, {"dups": "y"})),  # format wins, Accept's params stay
        ("car", RAW_TYPE, ("car", False, {})),
    ],
)
def test_the_response_kind_from_format_then_accept(
    format_: str | None, accept: str, expected: tuple[str, bool, dict[str, str]]
) -> None:
    assert response_kind(format_, accept) == expected


@pytest.mark.parametrize(
    ("format_", "accept", "status"),
    [
        ("tar", "", HTTPStatus.BAD_REQUEST),
        ("dag-json", "", HTTPStatus.BAD_REQUEST),
        (None, "application/vnd.ipld.dag-json", HTTPStatus.NOT_ACCEPTABLE),
        (None, "application/x-tar, application/json;q=0.5", HTTPStatus.NOT_ACCEPTABLE),
        (None, f"{CAR_TYPE};order=random", HTTPStatus.NOT_ACCEPTABLE),
    ],
)
def test_a_response_kind_not_served_is_refused(format_: str | None, accept: str, status: HTTPStatus) -> None:
    with pytest.raises(BadRequest) as refused:
        response_kind(format_, accept)
    assert refused.value.status == status


@pytest.mark.parametrize(
    ("query", "params", "scope", "entity_bytes", "dups"),
    [
        ({}, {}, "all", None, False),
        ({"dag-scope": "block"}, {}, "block", None, False),
        ({"car-dups": "y"}, {}, "all", None, True),
        ({}, {"dups": "y"}, "all", None, True),  # from Accept
        ({"car-dups": "n"}, {"dups": "y"}, "all", None, False),  # the query first
        ({"car-order": "unk", "car-version": "1"}, {}, "all", None, False),
        ({"entity-bytes": "0:*"}, {}, "entity", (0, None), False),  # entity-bytes implies the scope
        ({"entity-bytes": "10:19", "dag-scope": "entity"}, {}, "entity", (10, 19), False),
        ({"entity-bytes": "-10:*"}, {}, "entity", (-10, None), False),
        ({"entity-bytes": "5:-1"}, {}, "entity", (5, -1), False),
        ({"entity-bytes": "-20:-10"}, {}, "entity", (-20, -10), False),
        ({"entity-bytes": "-5:3"}, {}, "entity", (-5, 3), False),  # checked against the size later
        ({"entity-bytes": "7:7"}, {}, "entity", (7, 7), False),
    ],
)
def test_car_options_are_read(
    query: dict[str, str],
    params: dict[str, str],
    scope: str,
    entity_bytes: tuple[int, int | None] | None,
    dups: bool,
) -> None:
    ask = _ask(query)
    car_options(ask, params)
    assert (ask.scope, ask.entity_bytes, ask.dups) == (scope, entity_bytes, dups)


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ({"dag-scope": "everything"}, {}),
        ({"car-version": "2"}, {}),
        ({}, {"version": "2"}),
        ({"car-order": "bfs"}, {}),
        ({"car-dups": "maybe"}, {}),
        ({"entity-bytes": "9:3"}, {}),  # ends before it starts
        ({"entity-bytes": "1"}, {}),
        ({"entity-bytes": "*:5"}, {}),
        ({"entity-bytes": "a:b"}, {}),
        ({"entity-bytes": "1:2:3"}, {}),
        ({"entity-bytes": " 1:2"}, {}),
        ({"entity-bytes": ""}, {}),
        ({"entity-bytes": "0:*", "dag-scope": "block"}, {}),  # entity-bytes goes with dag-scope=entity
    ],
)
def test_bad_car_options_are_a_400(query: dict[str, str], params: dict[str, str]) -> None:
    with pytest.raises(BadRequest) as refused:
        car_options(_ask(query), params)
    assert refused.value.status == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize(
    ("asked", "size", "span"),
    [
        ((0, None), 100, (0, 100)),
        ((10, 19), 100, (10, 20)),  # inclusive
        ((10, 500), 100, (10, 100)),  # clipped to the file
        ((-10, None), 100, (90, 100)),  # from the end
        ((-500, None), 100, (0, 100)),
        ((5, -1), 100, (5, 100)),  # -1: the last byte
        ((-20, -11), 100, (80, 90)),
        ((50, -60), 100, (50, 50)),  # ends before it starts once resolved: empty
        ((200, None), 100, (200, 200)),  # past the end: empty, at or past size
        ((0, None), 0, (0, 0)),
    ],
)
def test_entity_bytes_as_a_span(asked: tuple[int, int | None], size: int, span: tuple[int, int]) -> None:
    assert entity_range(asked, size) == span


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=0-999", (0, 100)),  # clipped
        ("bytes=-10", (90, 100)),  # a suffix: the last 10 bytes
        ("bytes=-500", (0, 100)),  # a suffix longer than the file: all of it
        ("Bytes = 0-1", (0, 2)),
        ("bytes=0-9, 20-29", (0, 10)),  # the first range only
        ("bytes=99-99", (99, 100)),
        # unsatisfiable: the start at or past the size (the handler answers 416)
        ("bytes=100-", (100, 100)),
        ("bytes=150-200", (150, 100)),
        ("bytes=-0", (100, 100)),
        # not a range header this server reads: the whole is sent
        ("bytes=9-5", None),
        ("bytes=-", None),
        ("bytes=", None),
        ("items=0-9", None),
        ("bytes=a-b", None),
        ("0-9", None),
    ],
)
def test_a_range_header_as_a_span(header: str, span: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == span


@pytest.mark.parametrize(
    ("segment", "name"),
    [("plain", "plain"), ("a%20b", "a b"), ("%C3%A9t%C3%A9", "été"), ("...", "..."), (".hidden", ".hidden")],
)
def test_a_path_segment_is_percent_decoded(segment: str, name: str) -> None:
    assert segment_name(segment) == name


@pytest.mark.parametrize("segment", [".", "..", "%2E%2E", "a%2Fb", "a%00b", "%FF", "%C3"])
def test_a_segment_naming_no_entry_is_a_400(segment: str) -> None:
    with pytest.raises(BadRequest) as refused:
        segment_name(segment)
    assert refused.value.status == HTTPStatus.BAD_REQUEST


def test_a_car_etag_is_stable_and_names_the_car_s_shape() -> None:
    def etag(**fields: object) -> str:
        ask = _ask()
        for key, value in fields.items():
            setattr(ask, key, value)
        return car_etag(ask)

    # the same CAR keeps its Etag across runs and releases (caches hold it)
    assert etag() == f'"{ROOT_TEXT}.car.93109b7af2e2e8cf"'
    shaped = {"names": ["a", "b"], "scope": "entity", "entity_bytes": (0, None), "dups": True}
    assert etag(**shaped) == f'"{ROOT_TEXT}.car.d9787ffc30e962db"'
    variants = [
        etag(),
        etag(names=["a"]),
        etag(names=["a", "b"]),
        etag(scope="entity"),
        etag(scope="block"),
        etag(scope="entity", entity_bytes=(0, None)),
        etag(scope="entity", entity_bytes=(0, 9)),
        etag(scope="entity", entity_bytes=(-1, None)),
        etag(dups=True),
        etag(names=["\udcff"]),  # a name that is no UTF-8 still has one
    ]
    assert len(set(variants)) == len(variants)
    assert all(tag.startswith(f'"{ROOT_TEXT}.car.') for tag in variants)


@pytest.mark.parametrize(
    ("url", "kind", "query", "dups", "location"),
    [
        ("/ipfs/x", "raw", {}, False, "/ipfs/x?format=raw"),
        ("/ipfs/x/a", "car", {}, False, "/ipfs/x/a?format=car"),
        ("/ipfs/x", "car", {}, True, "/ipfs/x?format=car&car-dups=y"),  # dups from Accept, spelled out
        ("/ipfs/x?car-dups=y", "car", {"car-dups": "y"}, True, "/ipfs/x?car-dups=y&format=car"),
        (
            "/ipfs/x?dag-scope=block",
            "car",
            {"dag-scope": "block"},
            False,
            "/ipfs/x?dag-scope=block&format=car",
        ),
    ],
)
def test_content_location_spells_out_the_negotiated_format(
    url: str, kind: str, query: dict[str, str], dups: bool, location: str
) -> None:
    ask = _ask(query, kind=kind)
    ask.dups = dups
    assert content_location(urlsplit(url), ask) == location


@pytest.mark.parametrize(
    ("kind", "filename", "header"),
    [
        ("inline", None, "inline"),
        ("attachment", "a.car", 'attachment; filename="a.car"'),
        (
            "attachment",
            'say "hi"\\.txt',
            "attachment; filename=\"say _hi__.txt\"; filename*=UTF-8''say%20%22hi%22%5C.txt",
        ),
        ("inline", "été.bin", "inline; filename=\"_t_.bin\"; filename*=UTF-8''%C3%A9t%C3%A9.bin"),
        ("inline", "a\nb", "inline; filename=\"a_b\"; filename*=UTF-8''a%0Ab"),
    ],
)
def test_content_disposition_is_ascii_with_the_exact_name_beside(
    kind: str, filename: str | None, header: str
) -> None:
    assert content_disposition(kind, filename) == header


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        (".zarray", "application/json"),
        ("zarr.json", "application/json"),
        ("data.json", "application/json"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("README.md", "text/plain; charset=utf-8"),
        ("0.0.0", "application/octet-stream"),
        ("picture.png", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_a_file_s_content_type_by_its_name(name: str, content_type: str) -> None:
    assert content_type_for(name) == content_type


@pytest.mark.parametrize(
    ("headers", "declared"),
    [
        ({}, False),
        ({"Content-Length": "0"}, False),
        ({"Content-Length": " "}, False),
        ({"Content-Length": "12"}, True),
        ({"Transfer-Encoding": "chunked"}, True),
    ],
)
def test_a_request_that_declares_a_body(headers: dict[str, str], declared: bool) -> None:
    assert declares_body(headers) is declared


def test_small_chunks_are_coalesced_and_large_ones_pass_whole() -> None:
    big = b"x" * SEND_CHUNK
    assert list(coalesce([])) == []
    assert list(coalesce([b"head", b"", b"body"])) == [b"headbody"]
    assert list(coalesce([b"head", big, b"tail"])) == [b"head", big, b"tail"]
    half = b"y" * (SEND_CHUNK // 2 + 1)
    assert list(coalesce([half, half])) == [half, half]  # together they would pass SEND_CHUNK
    assert b"".join(coalesce([b"a"] * 1000)) == b"a" * 1000


def test_read_ahead_stops_at_its_limit_and_leaves_the_rest() -> None:
    blocks = iter([(b"1", b"aaaa"), (b"2", b"bbbb"), (b"3", b"cccc")])
    assert read_ahead(blocks, 6) == [(b"1", b"aaaa"), (b"2", b"bbbb")]  # the one that reaches it too
    assert list(blocks) == [(b"3", b"cccc")]
    assert read_ahead(iter([]), 6) == []
