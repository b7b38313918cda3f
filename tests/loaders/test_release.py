"""release_unreferenced: pages no kept tensor covers leave memory; kept tensors stay intact."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loaders import load_weights, release_unreferenced
from sidecar.models import LoadOptions
from sidecar.models.families import load_model
from sidecar.serving.loading import demo_model_path

PAGE = mmap.PAGESIZE


def resident_share(tensor: torch.Tensor) -> float:
    """The share of the whole pages inside `tensor` mapped in this process (/proc/self/pagemap:
    bit 63 of each page's entry; mincore would count a file's pages in the page cache)."""
    first = -(-tensor.data_ptr() // PAGE)
    stop = (tensor.data_ptr() + tensor.nbytes) // PAGE
    assert stop > first
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"<{stop - first}Q", pagemap.read((stop - first) * 8))
    present: int = sum(entry >> 63 for entry in entries)
    return present / (stop - first)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(4 * PAGE // 4, generator=generator),
        "b.unused": torch.randn(16 * PAGE // 4, generator=generator),
        "c.weight": torch.randn(3, PAGE // 4 + 5, generator=generator),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mapped"])
def test_pages_between_kept_tensors_are_released(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], mapped: bool
) -> None:
    path, expected = checkpoint
    loaded, _ = load_weights([path], mapped=mapped)
    assert resident_share(loaded["b.unused"]) == 1.0  # read (or faulted in) by the load
    kept = [loaded["c.weight"], loaded["a.weight"]]  # any order

    released = release_unreferenced(loaded.values(), kept)

    assert released >= 15 * PAGE  # b's whole pages, at least
    assert released <= expected["b.unused"].nbytes + 2 * PAGE
    assert resident_share(loaded["b.unused"]) == 0.0
    for name in ("a.weight", "c.weight"):
        assert torch.equal(loaded[name], expected[name])


def test_nothing_kept_outside_the_regions_changes_anything(
    checkpoint: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, expected = checkpoint
    loaded, _ = load_weights([path], mapped=False)
    everything = list(loaded.values())
    assert release_unreferenced(everything, everything) < 2 * PAGE  # only slivers at the seams
    assert release_unreferenced([], [torch.zeros(PAGE)]) == 0
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor)


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mapped"])
def test_the_encoder_hands_back_what_it_copied(mapped: bool) -> None:
    # The demo encoder fuses the query, key and value projections (copies) and skips the
    # pooler: those checkpoint tensors' pages leave memory once the model is built.
    files = sorted(demo_model_path().glob("*.safetensors"))
    loaded, _ = load_weights(files, mapped=mapped)
    options = LoadOptions(torch.device("cpu"), torch.float32, "embed", None, "torch")
    load_model(demo_model_path(), loaded, options)
    query = next(t for n, t in loaded.items() if n.endswith("layer.0.attention.self.query.weight"))
    pooler = next(t for n, t in loaded.items() if n.endswith("pooler.dense.weight"))
    dense = next(t for n, t in loaded.items() if n.endswith("layer.0.output.dense.weight"))
    assert resident_share(query) == 0.0
    assert resident_share(pooler) == 0.0
    # A parameter, used in place: its values intact (a released owned page reads back as zeros).
    with safe_open(str(files[0]), "pt") as checkpoint:
        name = next(n for n in loaded if n.endswith("layer.0.output.dense.weight"))
        assert torch.equal(dense, checkpoint.get_tensor(name))
    if not mapped:
        assert resident_share(dense) == 1.0
    # Mapped, a kernel with large page-cache folios may unmap a kept tensor's clean file pages
    # beside a released range (the whole 2 MB mapping goes; 6.18 does): they fault back in.
