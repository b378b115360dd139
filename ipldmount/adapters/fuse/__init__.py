"""The FUSE adapter: the only code that imports pyfuse3 or trio. Its handlers delegate to the
session (:mod:`ipldmount.session`); the kernel's inode numbers and lookup counts live here.
"""
