"""``ipldmount serve``: an IPFS HTTP gateway over a local blockstore (read-only).

What it implements, of https://specs.ipfs.tech/http-gateways/:

- the **trustless gateway**: ``GET``/``HEAD /ipfs/{cid}[/{path}]`` as the raw block
  (``application/vnd.ipld.raw``, a single ``Range`` served) or a CARv1 stream
  (``application/vnd.ipld.car; version=1; order=dfs; dups=n`` or ``dups=y``, as asked): the blocks
  that prove the path, then the entity's as ``dag-scope`` says (``block``; ``entity``: a file's
  every block, a directory's own block and HAMT nodes; ``all``), or as ``entity-bytes=from:to``
  narrows a file. The form is chosen by ``format`` (then ``car-version``, ``car-order``,
  ``car-dups``) or else ``Accept``, and then said in ``Content-Location``; ``Etag`` (a CAR's
  digests its path, scope, range and dups), ``If-None-Match`` (304), ``Cache-Control:
  only-if-cached`` (412 for what is not here), 404 for a block not here, the ``bafkqaaa`` probe
  (any identity CID: never sent as a block);
- **paths below a CID** for UnixFS (plain and HAMT-sharded dag-pb directories) and ipldmount's
  own trees (FORMAT.md 3.2: plain and sharded directories, inline directories and metadata);
- **deserialized responses** when neither raw nor a CAR is asked for (no ``Accept``, ``*/*``,
  a browser's): a file's bytes (zarr metadata as JSON, rendered; one ``Range``, 206 or 416), a
  directory as a short JSON listing ``{"cid", "entries": [{"name", "cid" or null}]}``.

Not implemented: ``/ipns/`` and IPNS records, TAR, DAG-JSON/DAG-CBOR/JSON conversion (406 or
400), HTML directory listings (and their trailing-slash redirects), multi-range answers (the first
range is sent), subdomain and DNSLink gateways. A path's segments are percent-decoded, empty
ones skipped, ``.`` and ``..`` refused (400); a name not there is a 404.

A stored block whose bytes do not hash to its CID is never sent: asked for alone, or found
within the first MiB of a CAR, it is answered 500 (a plain-text line naming it corrupt); found
later in a CAR, whose 200 is already sent, it ends the CAR there (the client finds it
incomplete). Either way one line naming the CID is logged.

The package's modules, whose imports point one way (each imports only those listed before it):
``negotiation`` (what a request asks for, decided by pure functions), ``handler`` (one request's
answer, read from the store), ``server`` (:class:`GatewayServer`: the connections, the worker
threads, and what bounds a hostile or broken client).
"""

from __future__ import annotations

from ipldmount.adapters.serve.server import GatewayServer

__all__ = ["GatewayServer"]
