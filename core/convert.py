"""Conversion of the canonical archives to the offline npz format (SPEC §0.5).

Each converter reads what :func:`depthlab.data.fetch` downloaded and returns the arrays
under the keys of the offline folder (``shared/data/README.md``), so a downloaded copy and
the offline one are read by the same loaders.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches, refusing any global but numpy's array rebuild."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_members(archive: Path, names: Sequence[str]) -> dict[str, dict]:
    found = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in names:
                found[base] = _CifarUnpickler(tar.extractfile(member), encoding="bytes").load()
    missing = set(names) - set(found)
    if missing:
        raise ValueError(f"{archive.name} lacks {sorted(missing)}")
    return found


def _cifar_images(batches: Sequence[dict]) -> np.ndarray:
    rows = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _cifar_ints(batches: Sequence[dict], key: bytes) -> np.ndarray:
    return np.concatenate([np.asarray(b[key], dtype=np.uint8) for b in batches])


def _names(values: Sequence[bytes]) -> np.ndarray:
    return np.array([v.decode() for v in values])


def convert_cifar10(archive: Path) -> dict[str, np.ndarray]:
    """``cifar-10-python.tar.gz`` -> offline keys (x_train, y_train, x_test, y_test, names)."""
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    got = _cifar_members(archive, [*train_names, "test_batch", "batches.meta"])
    train, test = [got[n] for n in train_names], [got["test_batch"]]
    return {
        "x_train": _cifar_images(train),
        "y_train": _cifar_ints(train, b"labels"),
        "x_test": _cifar_images(test),
        "y_test": _cifar_ints(test, b"labels"),
        "label_names": _names(got["batches.meta"][b"label_names"]),
    }


def convert_cifar100(archive: Path) -> dict[str, np.ndarray]:
    """``cifar-100-python.tar.gz`` -> the offline keys, full images as x_train / x_test."""
    got = _cifar_members(archive, ["train", "test", "meta"])
    out = {}
    for part in ("train", "test"):
        out[f"x_{part}"] = _cifar_images([got[part]])
        out[f"y_{part}_fine"] = _cifar_ints([got[part]], b"fine_labels")
        out[f"y_{part}_coarse"] = _cifar_ints([got[part]], b"coarse_labels")
    for kind in ("fine", "coarse"):
        out[f"{kind}_label_names"] = _names(got["meta"][f"{kind}_label_names".encode()])
    return out


def convert_mnist(archive: Path) -> dict[str, np.ndarray]:
    """Keras' ``mnist.npz`` -> the same four arrays (re-saved compressed)."""
    with np.load(archive, allow_pickle=False) as npz:
        return {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def _usps_rows(file: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(file, "rt") as f:
        rows = [line.split()[:257] for line in f if line.strip()]
    values = np.array(rows, dtype=np.float64)
    milli = np.rint(values[:, 1:] * 1000).astype(np.int16).reshape(-1, 16, 16)
    return milli, values[:, 0].astype(np.uint8)


def usps_uint8(milli: np.ndarray) -> np.ndarray:
    """The uint8 rendering of the ESL values, as torchvision does it (data README)."""
    as_float = (milli.astype(np.float64) / 1000.0).astype(np.float32)
    return ((as_float + 1) / 2 * 255).astype(np.uint8)


def convert_usps(train: Path, test: Path) -> dict[str, np.ndarray]:
    """ESL ``zip.train.gz`` / ``zip.test.gz`` (digit, then 256 values in [-1, 1])."""
    out = {}
    for part, file in (("train", train), ("test", test)):
        milli, labels = _usps_rows(file)
        out |= {f"x_{part}": usps_uint8(milli), f"y_{part}": labels, f"x_{part}_milli": milli}
    return out


def convert_coil20(archive: Path) -> dict[str, np.ndarray]:
    """``coil-20-proc.zip`` of ``obj<N>__<P>.png`` -> x, y = N - 1, pose = P (object-major)."""
    from PIL import Image  # Pillow comes with matplotlib

    found = []
    with zipfile.ZipFile(archive) as zf:
        for entry in zf.namelist():
            match = re.fullmatch(r"obj(\d+)__(\d+)\.png", entry.rsplit("/", 1)[-1])
            if match:
                with Image.open(io.BytesIO(zf.read(entry))) as img:
                    pixels = np.asarray(img if img.mode == "L" else img.convert("L"))
                found.append((int(match[1]) - 1, int(match[2]), pixels))
    if not found:
        raise ValueError(f"{archive.name} holds no obj<N>__<P>.png images")
    found.sort(key=lambda item: item[:2])
    return {
        "x": np.stack([item[2] for item in found]).astype(np.uint8),
        "y": np.array([item[0] for item in found], dtype=np.uint8),
        "pose": np.array([item[1] for item in found], dtype=np.uint8),
    }


CONVERTERS = {
    "mnist": convert_mnist,
    "cifar10": convert_cifar10,
    "cifar100": convert_cifar100,
    "usps": convert_usps,
    "coil20": convert_coil20,
}
