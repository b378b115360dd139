"""The front doors, thin over the repository and the session: the FUSE mount (:mod:`.fuse`), the
zarr Store (:mod:`.zarr_store`), the gateway server (:mod:`.serve`) and the command line
(:mod:`.cli`). They never import each other, except that the command line starts the mount and
the gateway server.
"""
