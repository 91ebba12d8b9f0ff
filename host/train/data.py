"""Image data sets held in memory as uint8 N×C×H×W, with the loaders edgekit supports.

- CIFAR-10/100 in their standard python-pickle format, read through an unpickler that only admits
  the numpy and builtin types those files contain (a pickle is code; a data file must not run any).
- An image folder: ``root/{train,test}/<class>/<image>``.
- ``write_digits``: scikit-learn's bundled handwritten digits written in the CIFAR format, so the
  demo and the tests use real images through the same loader.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}


@dataclass
class Split:
    images: np.ndarray  # uint8, N×C×H×W
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def hold_out(self, fraction: float, seed: int) -> tuple["Split", "Split"]:
        """(the rest, a held-out ``fraction``) by a seeded shuffle: the prune stage's validation split, which its
        trial fine-tunes (``prune/trial.py``) are judged on too."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = max(1, int(len(order) * fraction))
        return (Split(self.images[order[cut:]], self.labels[order[cut:]]),
                Split(self.images[order[:cut]], self.labels[order[:cut]]))


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (data.skip_unreadable)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches hold: dicts, lists, bytes, numbers and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    """One CIFAR batch file, checked where it is read: anything else is one line naming the file."""
    try:
        batch = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many kinds; all mean "not a batch"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{path}: not a CIFAR python batch ({first}); the file is damaged or of another "
                          "format: download or write it again (`edgekit data digits DIR` for the demo)") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path}: not a CIFAR python batch (holds a {type(batch).__name__}, not a dict)")
    return batch


def _batch_split(batches: list[tuple[Path, dict]]) -> Split:
    """Images and labels of the batches, each checked (a truncated or mixed batch names its file)."""
    data, labels = [], []
    for path, batch in batches:
        images, names = _batch_arrays(path, batch)
        if data and images.shape[1] != data[0].shape[1]:
            raise ConfigError(f"{path}: images of {images.shape[1]} values, the other batches have "
                              f"{data[0].shape[1]}: the batches are from different data sets")
        data.append(images)
        labels.append(names)
    images = np.concatenate(data)
    side = int(round((images.shape[1] / 3) ** 0.5))
    return Split(images.reshape(-1, 3, side, side), np.concatenate(labels))


def _batch_arrays(path: Path, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    key = b"labels" if b"labels" in batch else b"fine_labels"
    if b"data" not in batch or key not in batch:
        raise ConfigError(f"{path}: not a CIFAR batch (no {'data' if b'data' not in batch else 'labels'} entry)")
    try:
        images = np.asarray(batch[b"data"])
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: CIFAR batch with unreadable arrays ({exc})") from None
    side = int(round((images.shape[1] / 3) ** 0.5)) if images.ndim == 2 else 0
    if images.ndim != 2 or images.dtype.kind not in "ui" or side < 1 or 3 * side * side != images.shape[1]:
        raise ConfigError(f"{path}: CIFAR batch data of shape {list(images.shape)} and type {images.dtype}; "
                          "expected N rows of 3×H×H uint8 values: the file is damaged or of another format")
    if labels.ndim != 1 or len(labels) != len(images) or (len(labels) and labels.min() < 0):
        raise ConfigError(f"{path}: {len(images)} images but {labels.size} labels (or negative ones): the batch "
                          "is damaged; download or write it again")
    return images.astype(np.uint8), labels


def load_cifar(root: Path) -> Dataset:
    """CIFAR-10 (data_batch_*, test_batch, batches.meta) or CIFAR-100 (train, test, meta)."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    train_files = sorted(root.glob("data_batch_*")) or [p for p in [root / "train"] if p.is_file()]
    test_file = root / "test_batch" if (root / "test_batch").is_file() else root / "test"
    if not train_files or not test_file.is_file():
        raise ConfigError(f"{root}: no CIFAR batches (data_batch_* and test_batch, or train and test); "
                          "run `edgekit data digits DIR` for the demo data set")
    meta_file = root / "batches.meta" if (root / "batches.meta").is_file() else root / "meta"
    classes: list[str] = []
    if meta_file.is_file():
        meta = _load_batch(meta_file)
        names = meta.get(b"label_names") or meta.get(b"fine_label_names") or []
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = _batch_split([(p, _load_batch(p)) for p in train_files])
    test = _batch_split([(test_file, _load_batch(test_file))])
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ConfigError(f"{test_file}: images of {list(test.images.shape[1:])}, the training batches hold "
                          f"{list(train.images.shape[1:])}: the batches are from different data sets")
    return Dataset(train, test, classes or [str(i) for i in range(int(train.labels.max()) + 1)])


def load_folder(root: Path, size: tuple[int, int], skip_unreadable: bool = False) -> Dataset:
    """``root/train/<class>/*`` and ``root/test/<class>/*``, resized to ``size`` (H, W), RGB.

    Every image is checked as it is read: a broken one stops with its path, or with
    ``skip_unreadable`` is left out and counted. The class folders must be the same in both splits
    and none may be empty (the labels are the sorted class names: a missing one shifts them all).
    """
    root = Path(root)
    classes = class_folders(root)
    skipped: list[str] = []

    def read(split: str) -> Split:
        images, labels = [], []
        for index, name in enumerate(classes):
            before = len(images)
            for path in sorted((root / split / name).glob("*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                image = read_image(path, size, "RGB", skip_unreadable)
                if image is None:
                    skipped.append(str(path))
                    continue
                images.append(image)
                labels.append(index)
            if len(images) == before:
                raise ConfigError(f"{root / split / name}: no readable images in this class folder; add images "
                                  f"(.png, .jpg, ...) or remove the class from both train/ and test/")
        return Split(np.stack(images), np.asarray(labels, dtype=np.int64))

    return Dataset(read("train"), read("test"), classes, skipped)


def class_folders(root: Path) -> list[str]:
    """The class names: the same sub-folders under train/ and test/, else one line naming the difference."""
    found = {}
    for split in ("train", "test"):
        folder = root / split
        try:
            found[split] = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            if not folder.is_dir():
                raise ConfigError(f"{root}: expected train/<class>/<image> and test/<class>/<image> folders "
                                  f"({folder} is missing)") from None
            raise ConfigError(f"{folder}: cannot list it ({exc.strerror or exc}); check its permissions") from None
        if not found[split]:
            raise ConfigError(f"{folder}: no class folders; expected {split}/<class>/<image>")
    only_train = sorted(set(found["train"]) - set(found["test"]))
    only_test = sorted(set(found["test"]) - set(found["train"]))
    if only_train or only_test:
        where = "; ".join(f"only in {split}/: {', '.join(names)}" for split, names in
                          (("train", only_train), ("test", only_test)) if names)
        raise ConfigError(f"{root}: train/ and test/ have different class folders ({where}); the labels come from "
                          "the folder names, so both need the same classes")
    return found["train"]


def read_image(path: Path, size: tuple[int, int], mode: str, skip: bool = False) -> np.ndarray | None:
    """One image as uint8 C×H×W (``mode`` RGB or L), resized to ``size`` (H, W); a file that cannot be decoded
    is one line naming it, or None when ``skip``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, DecompressionBomb...
        if skip:
            return None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{path}: unreadable image ({reason}); replace or delete it, or set "
                          "data.skip_unreadable = true to skip such files") from None
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


def load_dataset(kind: str, path: Path, size: tuple[int, int] = (32, 32), skip_unreadable: bool = False) -> Dataset:
    if not Path(path).exists():
        raise ConfigError(f"data path {path} does not exist; run `edgekit data digits {path}` for the demo data")
    return load_cifar(path) if kind == "cifar" else load_folder(path, size, skip_unreadable)


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from the training images."""
    data = split.images.astype(np.float64) / 255.0
    return data.mean(axis=(0, 2, 3)).round(4).tolist(), data.std(axis=(0, 2, 3)).round(4).tolist()


def normalize(images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 N×C×H×W → float32 normalised, exactly what the exported model expects as input."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((images.astype(np.float32) / 255.0) - m) / s


def batches(split: Split, batch_size: int, mean: list[float], std: list[float], shuffle: bool = False,
            augment: tuple[str, ...] = (), seed: int = 0, index: Optional[np.ndarray] = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised tensor batches; ``augment`` may hold 'crop' (pad 4, random 32x32) and 'flip'; ``index``: these
    samples in this order (a distributed rank's shard) instead of all of them."""
    rng = np.random.default_rng(seed)
    order = index if index is not None else rng.permutation(len(split)) if shuffle else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        images = split.images[index]
        if "crop" in augment:
            images = _random_crop(images, 4, rng)
        if "flip" in augment:
            flip = rng.random(len(images)) < 0.5
            images = np.where(flip[:, None, None, None], images[..., ::-1], images)
        yield torch.from_numpy(normalize(images, mean, std)), torch.from_numpy(split.labels[index])


def _random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    return np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def write_digits(target: Path, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels) as a 3×size×size CIFAR data set.

    Upscaled bilinearly and split stratified with a fixed seed, so every machine gets the same files.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in grey])
    rgb = np.repeat(big[:, None], 3, axis=1)
    labels = digits.target.astype(np.int64)
    index_train, index_test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                               stratify=labels)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    names = [str(i) for i in range(10)]
    _write_batch(target / "data_batch_1", rgb[index_train], labels[index_train], "training batch 1 of 1")
    _write_batch(target / "test_batch", rgb[index_test], labels[index_test], "testing batch 1 of 1")
    (target / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names],
                                                        b"num_vis": size * size * 3}, protocol=2))
    return Dataset(Split(rgb[index_train], labels[index_train]), Split(rgb[index_test], labels[index_test]), names)


def prepare_digits(target: Path) -> dict[str, Any]:
    """``edgekit data digits``: the digits written to ``target``, with their sizes and channel statistics."""
    data = write_digits(target)
    mean, std = channel_stats(data.train)
    return {"path": str(target), "train": len(data.train), "test": len(data.test), "mean": mean, "std": std}


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, label: str) -> None:
    batch = {b"batch_label": label.encode(), b"labels": labels.tolist(),
             b"data": images.reshape(len(images), -1),
             b"filenames": [f"{i:05d}.png".encode() for i in range(len(images))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
