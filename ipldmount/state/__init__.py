"""A mount's state, without FUSE and without trio: the journal, open files' write buffers, the session.

Used by the mount wing (:mod:`ipldmount.mount`), never the other way round.
"""
