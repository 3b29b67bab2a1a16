"""Ingest throughput: our SCP (durable, fsynced spool) vs pynetdicom's storescp vs dcmtk's storescp.

Each receiver gets the same generated CT series (default 300 slices of 512x512) from dcmtk's
``storescu`` (a C sender, so that the sender is not the bottleneck), first over one association,
then split over 4 associations at once, in interleaved rounds (default 3) so that a slow spell of
the disk or the CPU hits every receiver alike. Prints images/s per receiver and round, the
medians and their ratios, all measured in this one run, and the time of one durable spool write
on this disk (what our SCP pays per instance that the other two do not). ``TCP_NODELAY=1`` is set for dcmtk. dcmtk's storescp listens on every
interface, so the script re-runs itself inside a private network namespace with only loopback
when it can (root); ``--no-namespace`` skips that.

    .venv/bin/python benchmarks/ingest.py                 # 300 x 512 x 512
    .venv/bin/python benchmarks/ingest.py --slices 60 --rounds 1   # quicker

Targets (issue 5): our SCP at least as fast as pynetdicom's storescp while also fsyncing;
4 associations not slower in aggregate than 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ct2mri_node.config import NodeSettings
from ct2mri_node.fsutil import atomic_write
from ct2mri_node.receive.completion import CompletionWatcher
from ct2mri_node.receive.scp import StoreSCP
from ct2mri_node.receive.spool import Spool

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory  # noqa: E402  (the same generated series)

_MARK = "CT2MRI_BENCH_IN_NAMESPACE"


class _NullSink:
    def series_received(self, series_uid: str, study_uid: str) -> None: ...
    def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float) -> None: ...


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"receiver on port {port} did not start")


@contextmanager
def ours(folder: Path) -> Iterator[int]:
    spool = Spool(folder)
    spool.create()
    watcher = CompletionWatcher(_NullSink(), 3600)
    scp = StoreSCP(NodeSettings(ae_title="CT2MRI", port=0, bind_address="127.0.0.1"), [], spool, watcher)
    scp.start()
    try:
        yield scp.port
    finally:
        scp.stop()


@contextmanager
def external(argv: Callable[[int], list[str]]) -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pynetdicom_storescp(folder: Path) -> Callable[[int], list[str]]:
    return lambda port: [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-ba", "127.0.0.1",
                         "-od", str(folder), "-aet", "CT2MRI"]


def dcmtk_storescp(folder: Path) -> Callable[[int], list[str]]:
    return lambda port: ["storescp", "-aet", "CT2MRI", "-od", str(folder), str(port)]


def send(port: int, files: list[Path], associations: int) -> float:
    """Send ``files`` with dcmtk storescu over ``associations`` concurrent associations; seconds."""
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-R", "-aec", "CT2MRI", "127.0.0.1", str(port), *map(str, g)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for g in groups]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start


def _series(folder: Path, slices: int, size: int) -> list[Path]:
    """The CT series of ``memory.py`` (same generator), its files."""
    memory.write_series(folder, slices, size)
    return sorted(folder.glob("*.dcm"))


def run(slices: int, size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"generating {slices} x {size} x {size} CT ...", flush=True)
        files = _series(root / "ct", slices, size)
        print(f"durable write of one slice on this disk (temp, fdatasync, rename, folder fsync): "
              f"{_durable_write_ms(root, files[0].stat().st_size):.2f} ms (median of 50)", flush=True)
        receivers = {
            "ct2mri-node SCP (fsync)": lambda d: ours(d),
            "pynetdicom storescp": lambda d: external(pynetdicom_storescp(d)),
            "dcmtk storescp": lambda d: external(dcmtk_storescp(d)),
        }
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(1, rounds + 1):      # interleaved, so a slow spell hits every receiver
            for name, make in receivers.items():
                for assocs in (1, 4):
                    out = root / f"out-{round_}-{assocs}-{len(rates)}"
                    out.mkdir()
                    with make(out) as port:
                        seconds = send(port, files, assocs)
                    rates.setdefault((name, assocs), []).append(len(files) / seconds)
                    print(f"  round {round_}  {name:<26} {assocs} assoc: {len(files) / seconds:7.1f} images/s"
                          f" ({seconds:.2f} s)", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        _ratios({key: statistics.median(values) for key, values in rates.items()}, rounds)


def _durable_write_ms(root: Path, size: int) -> float:
    """Median time of the spool's durable write of ``size`` bytes on this disk, in ms."""
    folder = root / "probe"
    folder.mkdir()
    data, times = os.urandom(size), []
    for n in range(50):
        start = time.perf_counter()
        atomic_write(folder / f"{n}.dcm", data)
        times.append((time.perf_counter() - start) * 1000)
    shutil.rmtree(folder)
    return statistics.median(times)


def _ratios(rates: dict[tuple[str, int], float], rounds: int) -> None:
    ours_name, pyn, dcmtk = "ct2mri-node SCP (fsync)", "pynetdicom storescp", "dcmtk storescp"
    print(f"medians of {rounds} round(s), images/s:")
    for (name, assocs), rate in rates.items():
        print(f"  {name:<26} {assocs} assoc: {rate:7.1f}")
    for assocs in (1, 4):
        print(f"ratio ours/pynetdicom ({assocs} assoc): {rates[(ours_name, assocs)] / rates[(pyn, assocs)]:.2f}"
              f"   ours/dcmtk: {rates[(ours_name, assocs)] / rates[(dcmtk, assocs)]:.2f}")
    print(f"ratio ours 4 assoc / 1 assoc: {rates[(ours_name, 4)] / rates[(ours_name, 1)]:.2f}"
          "  (targets: ours/pynetdicom >= 1, 4/1 >= 1)")


def _reexec_in_namespace() -> None:
    """Run this script again inside ``unshare -n`` with loopback up (root only)."""
    if os.environ.get(_MARK) or os.geteuid() != 0 or shutil.which("unshare") is None:
        return
    env = {**os.environ, _MARK: "1", "TCP_NODELAY": "1"}
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios use the medians")
    parser.add_argument("--no-namespace", action="store_true", help="do not enter a private network namespace")
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"
    if not args.no_namespace:
        _reexec_in_namespace()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    run(args.slices, args.size, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
