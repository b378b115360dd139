"""An IPFS node's RPC API (``/api/v0``), as Kubo serves it and js-ipfs copies it.

Every block that comes back is hashed against the CID it was asked for before anyone
sees it; every CID the node reports is compared with ours; every request carries a
timeout, for the node (``timeout=``) and for the socket, because a node asked for a
block it lacks may look for it forever. Where a node answers differently from Kubo
(js-ipfs), the difference is detected and logged, never silently papered over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import urllib3

from ipldmount.blocks.http import Endpoint, Timeouts, multipart_file
from ipldmount.errors import InvalidCIDError, RemoteError, RemoteTimeoutError
from ipldmount.ipld import cid as cids

log = logging.getLogger(__name__)

API = "/api/v0"
BLOCK_LIMIT = 1 << 20  # the largest block a node accepts from block/put and dag/import (Kubo's default)
BLOCK_TIMEOUT = 30.0  # seconds a node may look for one block before we give up on it
IMPORT_TIMEOUT = 3600.0  # seconds a node may take to store an imported CAR before it answers
CODEC_NAMES = {cids.RAW: "raw", cids.DAG_CBOR: "dag-cbor", cids.DAG_PB: "dag-pb"}


class KuboNode:
    """The RPC API of the IPFS node at *url* (``http://127.0.0.1:5001``)."""

    def __init__(self, url: str, *, block_timeout: float = BLOCK_TIMEOUT, timeouts: Timeouts | None = None):
        self.endpoint = Endpoint(url, "IPFS node", timeouts)
        self.block_timeout = block_timeout

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
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """POST *command*; a 200 response (streamed if asked), else RemoteError with the node's words.

        With *seconds*, the node is told to give up after that long (``timeout=``), and the
        socket waits a little longer for its answer.
        """
        if seconds is not None:
            params = [*params, ("timeout", f"{seconds:g}s")]
        headers = {"Content-Type": content_type} if content_type else None
        read = seconds + self.endpoint.timeouts.connect if seconds is not None else None
        response = self.endpoint.request(
            "POST", f"{API}/{command}", params, headers=headers, body=body, read_timeout=read, stream=stream
        )
        if response.status != 200:
            message = _node_message(response)  # a streamed one is read here: error bodies are small
            response.release_conn()
            raise self._refusal(command, params, response.status, message)
        return response

    def _refusal(self, command: str, params: list[tuple[str, str]], status: int, message: str) -> RemoteError:
        arg = next((value for key, value in params if key == "arg"), "")
        asked = f"{command} {arg}".strip()
        if any(word in message.lower() for word in ("timeout", "timed out", "deadline", "aborted")):
            return RemoteTimeoutError(f"IPFS node {self.url}: {asked}: gave up in time ({message})")
        return RemoteError(f"IPFS node {self.url}: {asked}: HTTP {status}: {message}")

    def _json(self, command: str, params: list[tuple[str, str]], **kwargs: Any) -> Any:
        response = self._call(command, params, **kwargs)
        try:
            return json.loads(response.data)
        except ValueError as exc:
            raise RemoteError(f"IPFS node {self.url}: {command}: not JSON: {response.data[:80]!r}") from exc

    # --- what the node is --------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """The node's ``version`` answer (``{"Version": ...}``): also a check that it is there."""
        answer = self._json("version", [], seconds=10.0)
        if not isinstance(answer, dict) or "Version" not in answer:
            raise RemoteError(f"IPFS node {self.url}: version: unexpected answer {answer!r}")
        return answer

    # --- blocks ------------------------------------------------------------------

    def get_block(self, cid: bytes) -> bytes:
        """The block *cid*, verified; RemoteError if the node lacks it within the block timeout."""
        name = cids.cid_to_str(cid)
        data = self._call("block/get", [("arg", name)], seconds=self.block_timeout).data
        if not cids.verify(cid, data):
            raise RemoteError(f"IPFS node {self.url} sent a wrong block for {name} ({len(data)} bytes)")
        return bytes(data)

    def block_size(self, cid: bytes, *, seconds: float = 10.0) -> int | None:
        """The size of block *cid* if the node holds it now, else None (never fetched from elsewhere).

        ``offline=true`` makes Kubo answer "not found" at once; a node that ignores it looks
        for the block until *seconds* pass, which also means "not here".
        """
        name = cids.cid_to_str(cid)
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
        return int(answer["Size"])

    def put_block(self, cid: bytes, data: bytes) -> None:
        """Store *data* on the node as block *cid* (already verified by the caller); the node's
        CID must be the same."""
        codec = cids.codec_of(cid)
        check_block_size(cid, len(data))
        content_type, body = multipart_file("block", [data])
        params = [("format", CODEC_NAMES[codec]), ("cid-codec", CODEC_NAMES[codec])]
        params += [("mhtype", "sha2-256"), ("cid-version", "1"), ("cid-base", "base32")]
        answer = self._json("block/put", params, body=body, content_type=content_type, seconds=60.0)
        self._check_key(answer, cid, "block/put")

    def _check_key(self, answer: Any, cid: bytes, command: str) -> None:
        """The node's ``{"Key": ...}`` must name *cid* (the same bytes, in any base)."""
        key = answer.get("Key") if isinstance(answer, dict) else None
        try:
            same = key is not None and cids.parse_cid(key) == cid
        except InvalidCIDError:
            same = False
        if not same:
            raise RemoteError(
                f"IPFS node {self.url}: {command} answered {key!r} for {cids.cid_to_str(cid)}: "
                "a different CID (codec or hash)"
            )

    # --- DAGs --------------------------------------------------------------------

    def import_car(self, pieces: Iterable[bytes], *, pin_roots: bool) -> list[bytes]:
        """``dag/import`` a CAR streamed from *pieces*; the roots the node reports."""
        content_type, body = multipart_file("dag.car", pieces)
        params = [("pin-roots", "true" if pin_roots else "false"), ("cid-base", "base32")]
        response = self._call(  # the node answers once all is stored: allow it time
            "dag/import", params, body=body, content_type=content_type, stream=True, seconds=IMPORT_TIMEOUT
        )
        roots: list[bytes] = []
        for line in _lines(self.endpoint.read_pieces(response, "dag/import")):
            root = _json_line(line).get("Root")
            if not isinstance(root, dict):
                continue  # stats lines
            roots.append(cids.parse_cid(root.get("Cid", {}).get("/", "")))
            if root.get("PinErrorMsg"):
                raise RemoteError(f"IPFS node {self.url}: dag/import could not pin: {root['PinErrorMsg']}")
        return roots

    def export_car(self, root: bytes) -> Iterator[bytes]:
        """``dag/export`` of *root*: the CAR's bytes as they come (the caller verifies every block)."""
        name = cids.cid_to_str(root)
        response = self._call("dag/export", [("arg", name), ("progress", "false")], stream=True)
        return self.endpoint.read_pieces(response, f"dag/export {name}")

    # --- pins --------------------------------------------------------------------

    def pin(self, root: bytes, *, seconds: float = 600.0) -> None:
        """Pin *root* recursively: the node then holds, and keeps, its whole DAG."""
        name = cids.cid_to_str(root)
        self._json("pin/add", [("arg", name), ("recursive", "true"), ("cid-base", "base32")], seconds=seconds)

    def is_pinned(self, root: bytes) -> bool:
        """True if *root* is pinned recursively (so its whole DAG is on the node)."""
        name = cids.cid_to_str(root)
        try:
            answer = self._json(
                "pin/ls", [("arg", name), ("type", "recursive"), ("cid-base", "base32")], seconds=10.0
            )
        except RemoteTimeoutError:
            return False
        except RemoteError as exc:
            if "not pinned" in str(exc).lower() or _means_absent(str(exc)):
                return False
            raise
        keys = answer.get("Keys", {}) if isinstance(answer, dict) else {}
        return any(_same_cid(key, root) for key in keys)


def check_block_size(cid: bytes, size: int) -> None:
    """RemoteError if a node would refuse a block of *size* bytes."""
    if size > BLOCK_LIMIT:
        raise RemoteError(
            f"block {cids.cid_to_str(cid)} is {size:,} bytes, over the {BLOCK_LIMIT:,} an IPFS node "
            "accepts (a file stored whole, --whole-files): it cannot be sent"
        )


def _same_cid(text: str, cid: bytes) -> bool:
    try:
        return cids.parse_cid(text) == cid
    except InvalidCIDError:
        return False


def _means_absent(message: str) -> bool:
    lowered = message.lower()
    return "not found" in lowered or "notfound" in lowered or "does not exist" in lowered


def _node_message(response: urllib3.BaseHTTPResponse) -> str:
    """The node's own words for a refusal (``{"Message": ...}``), or the start of its body."""
    body = response.data or b""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip() or response.reason or "no reason given"
    if isinstance(answer, dict) and answer.get("Message"):
        return str(answer["Message"])
    return str(answer)[:200]


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Newline-separated lines of a streamed body."""
    rest = b""
    for piece in pieces:
        rest += piece
        *lines, rest = rest.split(b"\n")
        yield from (line for line in lines if line.strip())
    if rest.strip():
        yield rest


def _json_line(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise RemoteError(f"an IPFS node answered a line that is not JSON: {line[:80]!r}") from exc
    if not isinstance(value, dict):
        raise RemoteError(f"an IPFS node answered an unexpected line: {line[:80]!r}")
    if value.get("Type") == "error" or ("Message" in value and "Root" not in value and "Stats" not in value):
        raise RemoteError(f"an IPFS node reported an error: {value.get('Message', value)}")
    return value
