"""The exceptions ipldmount raises, and the one place they become errno values.

Library code raises these; only the FUSE adapter and the CLI translate them
(via :func:`errno_for`), so the mapping to POSIX lives here and nowhere else.
"""

from __future__ import annotations

import errno


class IpldmountError(Exception):
    """Base class of every error ipldmount raises on purpose."""


# --- content addressing and blocks -------------------------------------------


class InvalidCIDError(IpldmountError, ValueError):
    """A string or byte sequence is not a CID this project can use."""


class BlockNotFoundError(IpldmountError):
    """A block the tree links to is not in the blockstore."""


class CorruptBlockError(IpldmountError):
    """A block's bytes do not hash to its CID, or do not decode."""


class FormatError(IpldmountError):
    """A block decodes, but is not a node of the ipldmount format (FORMAT.md)."""


class CarError(IpldmountError):
    """A CAR archive is malformed, truncated, or holds a block that fails verification."""


class RemoteError(IpldmountError):
    """An IPFS node or gateway failed, refused, or sent what it should not (a wrong block)."""


class RemoteTimeoutError(RemoteError):
    """An IPFS node or gateway did not answer within the time allowed."""


class FileTooLargeError(IpldmountError):
    """A file would grow past the largest size the format accepts (FORMAT.md §5)."""


class IncompleteDagError(IpldmountError):
    """Blocks under a root cannot be read, so no complete archive of it can be written."""

    def __init__(self, message: str, root: bytes, missing: list[bytes]) -> None:
        super().__init__(message)
        self.root, self.missing = root, missing


class CarWriteError(IpldmountError):
    """A sync committed its root, but the CAR could not be written (a full disk, say)."""

    def __init__(self, root: bytes, root_text: str, path: object, reason: OSError) -> None:
        self.root = root
        super().__init__(
            f"the root {root_text} is committed, but its CAR {path} could not be written "
            f"({reason.strerror or reason}): make room, then `ipldmount export {root_text} -o FILE`"
        )


class StoreFullError(IpldmountError):
    """The blockstore's disk is full; nothing partial was kept."""


# --- tree operations (these mirror POSIX errors) ------------------------------


class PathError(IpldmountError):
    """A tree operation was refused; carries the offending path for the log."""

    def __init__(self, path: str, message: str | None = None) -> None:
        super().__init__(f"{message or self.__doc__}: {path!r}")
        self.path = path


class NotFoundError(PathError):
    """No such file or directory"""


class AlreadyExistsError(PathError):
    """File exists"""


class NotDirectoryError(PathError):  # (OSError has NotADirectoryError; ours is a tree refusal)
    """Not a directory"""


class IsDirectoryError(PathError):
    """Is a directory"""


class DirectoryNotEmptyError(PathError):
    """Directory not empty"""


class NameTooLongError(PathError):
    """File name too long"""


class InvalidNameError(PathError):
    """Invalid file name"""


class InvalidMoveError(PathError):
    """Cannot move a directory into itself"""


class ReadOnlyError(IpldmountError):
    """The tree or mount is read-only."""


_ERRNO: dict[type[BaseException], int] = {
    NotFoundError: errno.ENOENT,
    AlreadyExistsError: errno.EEXIST,
    NotDirectoryError: errno.ENOTDIR,
    IsDirectoryError: errno.EISDIR,
    DirectoryNotEmptyError: errno.ENOTEMPTY,
    NameTooLongError: errno.ENAMETOOLONG,
    InvalidNameError: errno.EINVAL,
    InvalidMoveError: errno.EINVAL,
    ReadOnlyError: errno.EROFS,
    StoreFullError: errno.ENOSPC,
    FileTooLargeError: errno.EFBIG,
    BlockNotFoundError: errno.EIO,
    CorruptBlockError: errno.EIO,
    FormatError: errno.EIO,
    CarError: errno.EIO,
    RemoteError: errno.EIO,
    IncompleteDagError: errno.EIO,
    InvalidCIDError: errno.EINVAL,
}


def errno_for(exc: BaseException) -> int:
    """The errno a request that failed with *exc* should answer with."""
    for cls in type(exc).__mro__:
        if cls in _ERRNO:
            return _ERRNO[cls]
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
