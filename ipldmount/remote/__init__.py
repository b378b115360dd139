"""Remote transports: how blocks travel between this store and others (an IPFS node's RPC API,
a trustless gateway, a CAR over HTTP) and how a missing block is fetched.

Above :mod:`ipldmount.blocks` and beside :mod:`ipldmount.format`: storage and the format never
import it; a store that fetches is a local store wrapped by this wing.
"""
