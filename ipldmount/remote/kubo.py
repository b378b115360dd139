"""An IPFS node's RPC API (``/api/v0``), as Kubo serves it (tested against Kubo 0.43).

Every block that comes back is hashed against the CID it was asked for before anyone
sees it; every CID the node reports is compared with ours; every request carries a
timeout, for the node (``timeout=``) and a deadline of our own (:mod:`.http`), because a
node asked for a block it lacks may look for it forever, and one that trickles is never
silent. Every answer is bounded (a block by MAX_BLOCK, JSON by JSON_LIMIT, a line of a
streamed answer by LINE_LIMIT) and checked for the shape it must have: whatever else a node
sends is a one-line RemoteError. Where a node answers differently from Kubo, the difference
is detected and refused or logged, never silently papered over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from ipldmount.errors import InvalidCIDError, RemoteError, RemoteTimeoutError
from ipldmount.ipld import cid as cids
from ipldmount.remote.http import Endpoint, Reply, Timeouts, multipart_file
from ipldmount.remote.limits import MAX_BLOCK, check_block_size

log = logging.getLogger(__name__)

API = "/api/v0"
JSON_LIMIT = 1 << 20  # bytes of a JSON answer (ours are one object of a few fields)
LINE_LIMIT = 64 << 10  # bytes of one line of a streamed answer (dag/import's roots and stats)
SHORT = 10.0  # seconds for a question the node answers from what it holds (at most the total timeout)
IMPORT_TIMEOUT = 3600.0  # seconds a node is told it may take to store an imported CAR
PIN_BATCH = 64  # blocks pinned by one pin/add request (each its own arg)
RESOLVE_TIMEOUT = 30.0  # seconds an IPNS name may take to resolve (at most the total timeout)
PUBLISH_TIMEOUT = 120.0  # seconds a node may take to sign and announce an IPNS record
CODEC_NAMES = {cids.RAW: "raw", cids.DAG_CBOR: "dag-cbor", cids.DAG_PB: "dag-pb"}


class KuboNode:
    """The RPC API of the IPFS node at *url* (``http://127.0.0.1:5001``)."""

    def __init__(self, url: str, *, block_timeout: float | None = None, timeouts: Timeouts | None = None):
        self.endpoint = Endpoint(url, "IPFS node", timeouts)
        self.block_timeout = self.endpoint.timeouts.total if block_timeout is None else block_timeout

    def __repr__(self) -> str:
        return f"KuboNode({self.endpoint.url!r})"

    @property
    def url(self) -> str:
        return self.endpoint.url

    def close(self) -> None:
        self.endpoint.close()

    # --- requests ----------------------------------------------------------------

    def _call(
        self,
        command: str,
        params: list[tuple[str, str]],
        *,
        seconds: float | None = None,
        body: Iterable[bytes] | None = None,
        content_type: str | None = None,
        rated: bool = False,
    ) -> Reply:
        """POST *command*; a 200 reply (the caller reads and closes it), else RemoteError with the
        node's words.

        With *seconds*, we wait that long for the whole answer, and the node is told to give up
        a little sooner (``timeout=``) to say so itself; without, the total timeout. *rated*: a big
        transfer, given as long as its bytes take at the minimum rate (:class:`.http.Deadline`).
        """
        headers = {"Content-Type": content_type} if content_type else None
        if seconds is not None:
            params = [*params, ("timeout", f"{seconds - self._margin(seconds):g}s")]
        deadline = self.endpoint.deadline(rated=True) if rated else self.endpoint.deadline(seconds)
        asked = _asked(command, params)
        reply = self.endpoint.request(
            "POST",
            f"{API}/{command}",
            params,
            asked=asked,
            headers=headers,
            body=body,
            deadline=deadline,
            read_timeout=seconds,
        )
        if reply.status != 200:
            message = _node_message(reply)  # its first ERROR_LIMIT bytes at most
            raise self._refusal(asked, reply.status, message)
        return reply

    def _margin(self, seconds: float) -> float:
        """How much sooner than we stop waiting the node is told to give up (so we hear it say why)."""
        return min(self.endpoint.timeouts.connect, seconds / 2)

    def _short(self) -> float:
        return min(SHORT, self.endpoint.timeouts.total)

    def _refusal(self, asked: str, status: int, message: str) -> RemoteError:
        if any(word in message.lower() for word in ("timeout", "timed out", "deadline", "aborted")):
            return RemoteTimeoutError(f"IPFS node {self.url}: {asked}: gave up in time ({message})")
        return RemoteError(f"IPFS node {self.url}: {asked}: HTTP {status}: {message}")

    def _json(self, command: str, params: list[tuple[str, str]], **kwargs: Any) -> Any:
        """The node's JSON answer (at most JSON_LIMIT bytes) to *command*."""
        with self._call(command, params, **kwargs) as reply:
            data = reply.body(JSON_LIMIT, "JSON answer")
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise RemoteError(f"IPFS node {self.url}: {command}: not JSON: {data[:80]!r}") from None

    def _unexpected(self, command: str, answer: Any) -> RemoteError:
        return RemoteError(f"IPFS node {self.url}: {command}: unexpected answer {_brief(answer)}")

    def _field(self, answer: Any, key: str, kind: type[T], command: str) -> T:
        """*answer*[*key*], which must be a *kind*; else RemoteError (the node is not what it says)."""
        value = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self._unexpected(command, answer)
        return value

    # --- what the node is --------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """The node's ``version`` answer (``{"Version": ...}``): also a check that it is there."""
        answer = self._json("version", [], seconds=self._short())
        self._field(answer, "Version", str, "version")
        return dict(answer)

    # --- blocks ------------------------------------------------------------------

    def get_block(self, cid: bytes) -> bytes:
        """The block *cid*, verified; RemoteError if the node lacks it within the block timeout."""
        name = cids.cid_to_str(cid)
        with self._call("block/get", [("arg", name)], seconds=self.block_timeout) as reply:
            data = reply.body(MAX_BLOCK, "block")
        if not cids.verify(cid, data):
            raise RemoteError(f"IPFS node {self.url} sent a wrong block for {name} ({len(data)} bytes)")
        return data

    def block_size(self, cid: bytes, *, seconds: float | None = None) -> int | None:
        """The size of block *cid* if the node holds it now, else None (never fetched from elsewhere).

        ``offline=true`` makes Kubo answer "not found" at once; a node that ignores it looks
        for the block until *seconds* pass, which also means "not here".
        """
        name = cids.cid_to_str(cid)
        seconds = self._short() if seconds is None else seconds
        try:
            answer = self._json(
                "block/stat", [("arg", name), ("offline", "true"), ("cid-base", "base32")], seconds=seconds
            )
        except RemoteTimeoutError:
            return None
        except RemoteError as exc:
            if _means_absent(str(exc)):
                return None
            raise
        self._check_key(answer, cid, "block/stat")
        size = self._field(answer, "Size", int, "block/stat")
        if size < 0:
            raise self._unexpected("block/stat", answer)
        return size

    def put_block(self, cid: bytes, data: bytes) -> None:
        """Store *data* on the node as block *cid* (already verified by the caller); the node's
        CID must be the same."""
        codec = cids.codec_of(cid)
        check_block_size(cid, len(data))
        content_type, body = multipart_file("block", [data])
        # Kubo refuses the deprecated ``format`` beside ``cid-codec``; ``cid-codec`` implies CIDv1.
        params = [("cid-codec", CODEC_NAMES[codec]), ("mhtype", "sha2-256"), ("cid-base", "base32")]
        answer = self._json("block/put", params, body=body, content_type=content_type, seconds=60.0)
        self._check_key(answer, cid, "block/put")

    def _check_key(self, answer: Any, cid: bytes, command: str) -> None:
        """The node's ``{"Key": ...}`` must name *cid* (the same bytes, in any base)."""
        key = self._field(answer, "Key", str, command)
        if not _same_cid(key, cid):
            raise RemoteError(
                f"IPFS node {self.url}: {command} answered {_brief(key)} for {cids.cid_to_str(cid)}: "
                "a different CID (codec or hash)"
            )

    # --- DAGs --------------------------------------------------------------------

    def import_car(self, pieces: Iterable[bytes], *, pin_roots: bool) -> list[bytes]:
        """``dag/import`` a CAR streamed from *pieces*; the roots the node reports."""
        content_type, body = multipart_file("dag.car", pieces)
        params = [("pin-roots", "true" if pin_roots else "false"), ("cid-base", "base32")]
        reply = self._call(  # the node answers once all is stored: as long as the upload's size allows
            "dag/import", params, body=body, content_type=content_type, seconds=IMPORT_TIMEOUT, rated=True
        )
        with reply:
            return [root for line in _lines(reply.pieces()) if (root := self._imported_root(line))]

    def _imported_root(self, line: bytes) -> bytes | None:
        """The root a line of dag/import's answer reports (None for a stats line)."""
        root = _json_line(line).get("Root")
        if root is None:
            return None
        cid = self._field(root, "Cid", dict, "dag/import")
        text = self._field(cid, "/", str, "dag/import")
        failed = root.get("PinErrorMsg")
        if failed:
            raise RemoteError(f"IPFS node {self.url}: dag/import could not pin: {_brief(failed, 200)}")
        try:
            return cids.parse_cid(text)
        except InvalidCIDError:
            raise self._unexpected("dag/import", root) from None

    def export_car(self, root: bytes) -> Iterator[bytes]:
        """``dag/export`` of *root*: the CAR's bytes as they come (the caller verifies every block)."""
        name = cids.cid_to_str(root)
        return self._call("dag/export", [("arg", name), ("progress", "false")], rated=True).pieces()

    # --- pins --------------------------------------------------------------------

    def pin(self, root: bytes, *, seconds: float = 600.0) -> None:
        """Pin *root* recursively: the node then holds, and keeps, its whole DAG."""
        name = cids.cid_to_str(root)
        self._json("pin/add", [("arg", name), ("recursive", "true"), ("cid-base", "base32")], seconds=seconds)

    def pin_blocks(self, blocks: Sequence[bytes], *, seconds: float = 60.0) -> None:
        """Pin each of *blocks* alone (``recursive=false``), PIN_BATCH to a request: a commit is
        kept so, since a recursive pin of it would make the node fetch every older tree."""
        for start in range(0, len(blocks), PIN_BATCH):
            params = [("arg", cids.cid_to_str(cid)) for cid in blocks[start : start + PIN_BATCH]]
            params += [("recursive", "false"), ("cid-base", "base32")]
            self._json("pin/add", params, seconds=seconds)

    def is_pinned(self, root: bytes) -> bool:
        """True if *root* is pinned recursively (so its whole DAG is on the node)."""
        name = cids.cid_to_str(root)
        try:
            answer = self._json(
                "pin/ls",
                [("arg", name), ("type", "recursive"), ("cid-base", "base32")],
                seconds=self._short(),
            )
        except RemoteTimeoutError:
            return False
        except RemoteError as exc:
            if "not pinned" in str(exc).lower() or _means_absent(str(exc)):
                return False
            raise
        keys = self._field(answer, "Keys", dict, "pin/ls")  # {CID: {"Type": ...}}
        return any(_same_cid(key, root) for key in keys)

    # --- IPNS ----------------------------------------------------------------------

    def name_publish(
        self, cid: bytes, *, key: str = "self", lifetime: float = 86400.0, seconds: float = PUBLISH_TIMEOUT
    ) -> str:
        """Point the IPNS name of *key* at ``/ipfs/CID`` (signed by the node, kept for *lifetime*
        seconds); the name. ``allow-offline``: a node with no peers keeps the record itself
        rather than refuse (Kubo); one online also announces it, within *seconds*."""
        target = f"/ipfs/{cids.cid_to_str(cid)}"
        params = [("arg", target), ("key", key), ("allow-offline", "true"), ("lifetime", f"{lifetime:g}s")]
        answer = self._json("name/publish", params, seconds=seconds)
        name = self._field(answer, "Name", str, "name/publish")
        value = self._field(answer, "Value", str, "name/publish")
        if not _names_cid(value, cid):
            raise RemoteError(f"IPFS node {self.url}: name/publish published {_brief(value)}, not {target}")
        return name.removeprefix("/ipns/")

    def key_names(self) -> set[str]:
        """The names of the node's keys (``self`` and those ``key/gen`` made)."""
        answer = self._json("key/list", [], seconds=self._short())
        keys = self._field(answer, "Keys", list, "key/list")
        return {self._field(key, "Name", str, "key/list") for key in keys}

    def name_resolve(self, name: str, *, seconds: float = RESOLVE_TIMEOUT) -> bytes:
        """The CID ``/ipns/NAME`` points at (through any chain of names), asked of the node
        within *seconds*: a name is looked up on the network, which may never answer."""
        shown = name if name.startswith("/ipns/") else f"/ipns/{name}"
        seconds = min(seconds, self.endpoint.timeouts.total)
        answer = self._json("name/resolve", [("arg", shown), ("recursive", "true")], seconds=seconds)
        path = self._field(answer, "Path", str, "name/resolve")
        cid_text = path.removeprefix("/ipfs/")
        if cid_text == path or "/" in cid_text:
            raise RemoteError(f"{shown} points at {_brief(path)}, not at a root (/ipfs/CID)")
        try:
            return cids.parse_cid(cid_text)
        except InvalidCIDError as exc:
            raise RemoteError(f"{shown} points at {_brief(path)}: {exc}") from None


T = TypeVar("T")


def _asked(command: str, params: list[tuple[str, str]]) -> str:
    """A request in messages: the command and its argument (``block/get bafy...``)."""
    arg = next((value for key, value in params if key == "arg"), "")
    return f"{command} {arg}".strip()


def _names_cid(path: str, cid: bytes) -> bool:
    """``/ipfs/CID`` naming *cid* in any base (a node may answer base58btc or base32)."""
    return path.startswith("/ipfs/") and _same_cid(path.removeprefix("/ipfs/"), cid)


def _same_cid(text: object, cid: bytes) -> bool:
    try:
        return isinstance(text, str) and cids.parse_cid(text) == cid
    except InvalidCIDError:
        return False


def _brief(value: object, limit: int = 80) -> str:
    """*value* for a one-line message: its repr, cut short."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _means_absent(message: str) -> bool:
    lowered = message.lower()
    return "not found" in lowered or "notfound" in lowered or "does not exist" in lowered


def _node_message(reply: Reply) -> str:
    """The node's own words for a refusal (``{"Message": ...}``), or the start of its body: one
    line of at most 300 characters, from the body's first ERROR_LIMIT bytes (the rest unread)."""
    body = reply.start()
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = body.decode("utf-8", "replace")
    if isinstance(answer, dict) and answer.get("Message"):
        answer = answer["Message"]
    message = " ".join("".join(c if c.isprintable() else " " for c in str(answer)).split())
    return (message[:297] + "..." if len(message) > 300 else message) or reply.reason or "no reason given"


def _lines(pieces: Iterable[bytes], limit: int = LINE_LIMIT) -> Iterator[bytes]:
    """Newline-separated lines of a streamed body; RemoteError for a line over *limit* bytes."""
    rest = b""
    for piece in pieces:
        rest += piece
        *lines, rest = rest.split(b"\n")
        if any(len(line) > limit for line in (*lines, rest)):
            raise RemoteError(f"an IPFS node answered a line over {limit:,} bytes")
        yield from (line for line in lines if line.strip())
    if rest.strip():
        yield rest


def _json_line(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise RemoteError(f"an IPFS node answered a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(value, dict):
        raise RemoteError(f"an IPFS node answered an unexpected line: {line[:80]!r}")
    if value.get("Type") == "error" or ("Message" in value and "Root" not in value and "Stats" not in value):
        raise RemoteError(f"an IPFS node reported an error: {_brief(value.get('Message', value), 300)}")
    return value
