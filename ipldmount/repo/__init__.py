"""The repository: one store's files under ``STORE/`` (history, tags, live roots, attributes),
resolving roots, recording them, importing and exporting CARs, and gc.

Every front door (the command line, the zarr Store, the mount) goes through this wing.
"""
