"""A mount's session: its journaled changes and the whole life of its open files, without FUSE
and without trio, so it can be driven and tested alone.
"""
