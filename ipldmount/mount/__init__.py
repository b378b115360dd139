"""The FUSE mount: the only code that imports pyfuse3 or trio (handlers, the daemon, its control socket)."""
