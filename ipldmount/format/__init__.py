"""The block format of FORMAT.md: files (raw leaves, FBL nodes), directory nodes, HAMTs, inline metadata.

The tree model (:mod:`ipldmount.tree.model`) reads and writes blocks only through these modules.
"""
