from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loaders import filesystem_type, is_network_filesystem, load_weights

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 22 0:40 / /models ro,relatime shared:5 - nfs4 server:/export ro,vers=4.2
31 22 0:41 / /mnt/sshfs rw - fuse.sshfs host:/data rw
32 30 0:42 / /models/local rw - xfs /dev/vdb rw
33 22 0:43 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fs_type", "network"),
    [
        ("/srv/model.safetensors", "ext4", False),
        ("/models/minilm/model.safetensors", "nfs4", True),
        ("/models/local/model.safetensors", "xfs", False),  # the deepest mount wins
        ("/mnt/sshfs/m.safetensors", "fuse.sshfs", True),
        ("/mnt/with space/m.safetensors", "tmpfs", False),
        ("/modelsx/m.safetensors", "ext4", False),  # a prefix of a name is not a parent
    ],
)
def test_filesystem_of_a_path(path: str, fs_type: str, network: bool) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == fs_type
    assert is_network_filesystem(Path(path), MOUNTINFO) is network


def test_unknown_filesystem_counts_as_network() -> None:
    assert is_network_filesystem(Path("/x"), "garbage line\n")


def test_auto_mode_maps_local_files_on_cpu(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, path)
    tensors, stats = load_weights([path])
    assert stats.mapped is not is_network_filesystem(path)
    assert torch.equal(tensors["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    _, forced = load_weights([path], mapped=False)
    assert not forced.mapped
