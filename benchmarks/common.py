"""Shared benchmark plumbing: a trained model on the digits, side-by-side latency, table and JSON output.

Latencies are measured interleaved (round-robin over the candidates, several rounds) so that noise on
a shared machine hits every candidate alike; medians are reported, and ratios come from one run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from edgekit.device.stats import summarize
from edgekit.host.train.checkpoint import load_model, save_checkpoint
from edgekit.host.train.data import Dataset, Split, channel_stats, load_cifar, write_digits
from edgekit.host.train.loop import top1, train
from edgekit.host.train.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=160)


def digits(work: Path) -> Dataset:
    if not (work / "digits" / "test_batch").exists():
        write_digits(work / "digits")
    return load_cifar(work / "digits")


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (apt-get install)
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def fashion(root: Path = FASHION) -> Dataset:
    """Fashion-MNIST (Zalando's 70,000 28×28 grey product photos, 10 classes, in shuffled order) as 3×32×32
    images: padded by 2 px and repeated to three channels, so a model and its latency table are the ones the
    digits run uses."""
    import gzip

    def read(name: str, header: int) -> np.ndarray:
        path = Path(root) / name
        if not path.is_file():
            raise SystemExit(f"{path}: not found; install Debian's dataset-fashion-mnist "
                             "(make bench-data, as root) or pass --fashion DIR")
        with gzip.open(path, "rb") as handle:
            return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)  # idx: big-endian header, then bytes

    def split(prefix: str) -> Split:
        grey = read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        padded = np.pad(grey, ((0, 0), (2, 2), (2, 2)))
        return Split(np.repeat(padded[:, None], 3, axis=1), read(f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64))

    return Dataset(split("train"), split("t10k"), list(FASHION_CLASSES))


def trained(work: Path, arch: str, width: float, epochs: int, data: Dataset, lr: float = 0.05, tag: str = ""):
    """Train once and keep the checkpoint in ``work`` so a re-run measures, not trains (``tag``: which data set,
    when a work folder holds models of several)."""
    mean, std = channel_stats(data.train)
    path = work / f"{arch}-w{width}-e{epochs}{tag}.pt"
    if path.exists():
        model, _ = load_model(path, arch, 10, width, 3)
        return model, mean, std
    model = create_model(arch, 10, width)
    start = time.perf_counter()
    train(model, data.train, mean, std, epochs=epochs, batch_size=64, lr=lr, augment=("crop",),
          progress=lambda e, n, loss: console.print(f"[dim]{arch} ×{width}: epoch {e}/{n} loss {loss:.3f}[/dim]"))
    accuracy = top1(model, data.test, mean, std)
    console.print(f"[dim]trained in {time.perf_counter() - start:.0f}s, top-1 {accuracy:.2%}[/dim]")
    save_checkpoint(path, model, {"arch": arch, "width": width})
    return model.eval(), mean, std


def served(path: Path, folder: Path, runtime: str = "onnxruntime", precision: str = "fp32") -> Any:
    """The file as the agent serves it: built by its own backend for ``runtime`` (ONNX Runtime: every graph
    optimisation, the result saved and loaded again; OpenVINO: at ``precision``, "fp16" being its default) with
    the runtime's default thread pool, so the script times what the device's figures are of."""
    from edgekit.device.backends import get_backend

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    backend = get_backend(runtime)
    return backend.load(folder, backend.build(path, folder, {"precision": precision, "batch_sizes": []},
                                              lambda _: None))


def side_by_side(models: dict[str, Path], batch: int, rounds: int = 7, per_round: int = 10,
                 runtime: str = "onnxruntime", precision: str = "fp32") -> dict[str, dict]:
    """Median latency per model in alternating rounds (a busy machine slows them alike), each round the file
    served afresh (``served``), timed alone and closed, as the agent times and serves one. Sessions alive side by
    side leave their idle threads spinning on the cores: on 2 cores the unpruned ResNet-20 ×4 read 16.8 ms among
    six other sessions against 5.9 ms alone; turning spinning off instead measured another policy than the
    device's (the unpruned MobileNetV2 at batch 1: 2.1 ms against 1.34 ms as served)."""
    data = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    timings: dict[str, list[float]] = {name: [] for name in models}
    folder = Path(tempfile.mkdtemp(prefix="edgekit-side-by-side-"))
    try:
        for _ in range(rounds):
            for name, path in models.items():
                engine = served(path, folder / "engine", runtime, precision)
                for _ in range(3):  # warm-up: the pool's threads, the first allocations
                    engine.run(data)
                for _ in range(per_round):
                    tick = time.perf_counter()
                    engine.run(data)
                    timings[name].append((time.perf_counter() - tick) * 1000)
                engine.close()
                del engine
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: summarize(values) for name, values in timings.items()}


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def report(name: str, title: str, columns: list[str], rows: list[list[Any]], data: dict[str, Any]) -> Path:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = dict(data, machine={"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                               "onnxruntime": ort.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    console.print(f"wrote {path}")
    return path


def engine_worker(connection: Any, runtime: str, path: str, batches: list[int], precision: str = "fp32") -> None:
    """Build and load the engine like the agent does (at ``precision``: "fp16" is OpenVINO's default inference
    precision), say what it runs, then answer 'outputs' and 'round' requests."""
    from edgekit.device.backends import get_backend

    backend = get_backend(runtime)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        meta = backend.build(Path(path), Path(tmp), {"batch_sizes": batches, "threads": 0, "precision": precision,
                                                     "openvino_cache_dir": str(Path(tmp) / "cache")}, lambda m: None)
        engine = backend.load(Path(tmp), meta)
        data = {b: np.random.default_rng(0).standard_normal((b, 3, 32, 32)).astype(np.float32) for b in batches}
        engine.run(data[batches[0]])
        connection.send(("ready", engine.executed_precision() or precision))
        while True:
            request = connection.recv()
            if request[0] == "stop":
                break
            if request[0] == "outputs":
                inputs = request[1]
                connection.send(np.concatenate([engine.run(inputs[i:i + 32]) for i in range(0, len(inputs), 32)]))
                continue
            _, batch, seconds = request
            engine.run(data[batch])  # wake the threads, untimed
            timings, begin = [], time.perf_counter()
            while len(timings) < 3 or time.perf_counter() - begin < seconds:
                tick = time.perf_counter()
                engine.run(data[batch])
                timings.append((time.perf_counter() - tick) * 1000.0)
            connection.send(statistics.median(timings))


class EngineWorkers:
    """One worker process per (model file, runtime[, precision]), built by the agent's own backend classes.

    Each engine lives in its own process so one runtime's idle (spinning) threads cannot slow another;
    ``rounds`` makes them take turns round by round, so noise on a shared machine hits every one alike.
    """

    def __init__(self, engines: dict[Hashable, tuple[str, Path]], batches: list[int]) -> None:
        context = mp.get_context("spawn")
        self.batches = batches
        self.workers = {}
        self.executed: dict[Hashable, str] = {}  # what each engine runs, as its runtime says (OpenVINO: bf16...)
        for key, (runtime, path, *precision) in engines.items():
            ours, theirs = context.Pipe()
            process = context.Process(target=engine_worker, args=(theirs, runtime, str(path), batches, *precision),
                                      daemon=True)
            process.start()
            self.workers[key] = (ours, process)
        for key, (ours, _) in self.workers.items():
            self.executed[key] = ours.recv()[1]

    def outputs(self, key: Hashable, inputs: np.ndarray) -> np.ndarray:
        ours, _ = self.workers[key]
        ours.send(("outputs", inputs))
        return ours.recv()

    def rounds(self, rounds: int, round_s: float) -> dict[Hashable, dict[int, list[float]]]:
        """Per engine and batch size, the median latency (ms) of each round."""
        medians: dict[Hashable, dict[int, list[float]]] = {key: {b: [] for b in self.batches} for key in self.workers}
        for _ in range(rounds):
            for batch in self.batches:
                for key, (ours, _) in self.workers.items():
                    ours.send(("round", batch, round_s))
                    medians[key][batch].append(ours.recv())
        return medians

    def __enter__(self) -> EngineWorkers:
        return self

    def __exit__(self, *_: Any) -> None:
        for ours, process in self.workers.values():
            ours.send(("stop",))
            process.join(timeout=30)
