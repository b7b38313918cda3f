"""Which filesystem a file lives on: mapping pays off on local storage, eager reads elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

# Filesystems where page faults become network round trips (safetensors issues #562 and #729
# measured mmap 8-50x slower there), plus every FUSE filesystem (sshfs, gcsfuse, s3fs, ...).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "9p", "gpfs", "glusterfs",
        "beegfs", "afs", "ocfs2", "gfs2", "virtiofs", "davfs", "orangefs", "pvfs2",
    }
)  # fmt: skip


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding `path` (from /proc/self/mountinfo), None if unknown.

    Args:
        path: a file or directory.
        mountinfo: the text of a mountinfo file; read from /proc/self/mountinfo when omitted.
    """
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as handle:
                mountinfo = handle.read()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mountinfo.splitlines():
        # "<id> <parent> <major:minor> <root> <mount point> <options> [optional...] - <type> ..."
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def is_network_filesystem(path: Path, mountinfo: str | None = None) -> bool:
    """True for network and FUSE filesystems, where mapping a file is slow."""
    fs_type = filesystem_type(path, mountinfo)
    if fs_type is None:
        return True  # unknown: the eager reads are never the slow choice
    return fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse")
