"""A pass-through FUSE file system that answers EIO on demand: the fault tests' failing disk.

    python tests/eio_fs.py BACKING MOUNTPOINT CONTROL

Every operation goes to the real files under BACKING. While the file CONTROL exists, each of its lines is a
path prefix inside the mount (``/engines/``, ``/`` for everything), and every operation that writes under one
of them (create, write, mkdir, rename, truncate, fsync, unlink, symlink, chmod, utimens) fails with EIO in the
kernel, so the agent meets exactly the errno a dying SD card gives it. Why FUSE: device-mapper's
``error``/``flakey`` targets are not in this kernel, and an LD_PRELOAD shim would fake libc, not the disk.
Needs root (the mount) and libfuse3 (``make test`` installs it); mfusepy is the ctypes binding (test extra).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Optional

from mfusepy import FUSE, FuseOSError, Operations


class FailingDisk(Operations):
    """Pass-through to ``backing``; writes under the prefixes listed in ``control`` raise EIO."""

    use_ns = True

    def __init__(self, backing: str, control: str) -> None:
        self.backing, self.control = os.path.realpath(backing), control

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _check(self, *paths: str) -> None:
        try:
            prefixes = [line.strip() for line in Path(self.control).read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return
        if any(path.startswith(prefix) for path in paths for prefix in prefixes):
            raise FuseOSError(errno.EIO)

    @staticmethod
    def _call(function, *args: Any) -> Any:
        try:
            return function(*args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    # -- reading ---------------------------------------------------------------------------------------------
    def getattr(self, path: str, fh: Optional[int] = None) -> dict[str, Any]:
        st = self._call(os.lstat, self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        found = {key.replace("_ns", ""): getattr(st, key) for key in keys}
        return dict(found, st_blocks=st.st_blocks, st_blksize=st.st_blksize)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self._call(os.listdir, self._real(path))]

    def readlink(self, path: str) -> str:
        return self._call(os.readlink, self._real(path))

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise FuseOSError(errno.EACCES)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {key: getattr(st, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_TRUNC:  # opening for writing works on a failing disk; writing to it does not
            self._check(path)
        return self._call(os.open, self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._call(os.pread, fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    # -- writing ---------------------------------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._check(path)
        return self._call(os.open, self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._check(path)
        return self._call(os.pwrite, fh, data, offset)

    def truncate(self, path: str, length: int, fh: Optional[int] = None) -> int:
        self._check(path)
        self._call(os.truncate, self._real(path), length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._check(path)
        self._call(os.fsync, fh)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._check(path)
        self._call(os.mkdir, self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        self._check(path)
        self._call(os.rmdir, self._real(path))
        return 0

    def unlink(self, path: str) -> int:
        self._check(path)
        self._call(os.unlink, self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._check(old, new)
        self._call(os.replace, self._real(old), self._real(new))
        return 0

    def symlink(self, target: str, source: str) -> int:  # mfusepy: the link is ``target``, pointing at ``source``
        self._check(target)
        self._call(os.symlink, source, self._real(target))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._check(path)
        self._call(os.chmod, self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._call(os.chown, self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: Optional[tuple[int, int]] = None) -> int:
        self._check(path)
        if times:
            self._call(lambda real: os.utime(real, ns=times), self._real(path))
        else:
            self._call(os.utime, self._real(path))
        return 0


def main() -> None:
    backing, mountpoint, control = sys.argv[1:4]
    FUSE(FailingDisk(backing, control), mountpoint, foreground=True, nothreads=True, allow_other=True)


if __name__ == "__main__":
    main()
