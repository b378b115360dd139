"""The tree model: a mutable directory tree over the format's nodes (:mod:`.model`) and the
read-only tree over UnixFS DAGs (:mod:`.unixfs`). It knows nothing of the kernel or of mounts.
"""
