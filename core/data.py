"""Data sets: file resolution, checked downloads, loaders and splits (SPEC §0.5).

Each data set is one npz file ``<name>.npz`` with the keys of the offline folder
(``shared/data/README.md``) in the data directory: ``$DEPTHLAB_DATA_DIR`` (a relative value
is resolved against the working directory), default ``~/.cache/depthlab``. A missing file is
downloaded from the canonical source (:data:`SOURCES`), checked (archive sha256 where
published, then the content sha256s of §0.5), converted and written atomically; when that
fails the loader raises :class:`DataNotFoundError` within seconds. A damaged file (truncated,
bit-flipped, wrong keys, shapes or dtypes, content digest mismatch) raises
:class:`DataCorruptError` on its first read, checked once per file version (:data:`SCHEMAS`).

Loaders return numpy arrays (uint8 images, int64 labels) in a frozen :class:`Dataset`;
:func:`depthlab.augment.split_batches` turns one into the batches ``fit`` reads. This
module imports no Keras.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from depthlab import convert

ENV_VAR = "DEPTHLAB_DATA_DIR"
DEFAULT_DIR = Path("~/.cache/depthlab")
TIMEOUT_S = 10.0  # socket timeout of a download; there is no retry loop
NAMES = ("mnist", "cifar10", "cifar100", "usps", "coil20")


class DataNotFoundError(FileNotFoundError):
    """A data file is neither in the data directory nor downloadable, or is partial."""


class PartialDataError(DataNotFoundError):
    """The request reaches beyond the images a partial copy holds (CIFAR-100 offline)."""


class DataCorruptError(ValueError):
    """A data file is damaged; the one-line message names it and says to delete it.

    Raised instead of a zipfile/numpy traceback deep in a run, so the CLI can print it as a
    usage error: ``<path> is corrupt (<reason>); delete it to download again``.
    """


class _DownloadError(DataNotFoundError):
    """A download failed (network unreachable, HTTP error, timeout)."""


class ChecksumError(ValueError):
    """A downloaded archive or a converted array does not have its published sha256 or shape."""


@dataclass(frozen=True)
class Remote:
    """One file to download: its URL and its published sha256 (None: none published)."""

    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """Where a data set comes from and the content digests its conversion must match."""

    remotes: tuple[Remote, ...]
    content_sha256: Mapping[str, str] = field(default_factory=dict)


_CIFAR = "https://www.cs.toronto.edu/~kriz/"
_ESL = "https://hastie.su.domains/ElemStatLearn/datasets/"
_COIL = "https://www.cs.columbia.edu/CAVE/databases/SLAM_coil-20_coil-100/coil-20/"

# SPEC §0.5 table. Tests replace entries with local file:// archives.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        (
            Remote(
                "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
                "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            ),
        ),
        {
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
    ),
    "cifar10": Source(
        (
            Remote(
                _CIFAR + "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ),
        ),
        {
            "y_train": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
            "y_test": "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
        },
    ),
    "cifar100": Source(
        (
            Remote(
                _CIFAR + "cifar-100-python.tar.gz",
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            ),
        ),
        {
            "y_train_fine": "9f11b9f97aad759ba6df0a33e3218b01d8deaf4ed3a14aa1185d69b9ad7ebcb3",
            "y_test_fine": "4dad7d09c7c97d33f6cb928d705cf4196221316fd6e31bdd978a08ed9103ee0b",
            "y_train_coarse": "1804078d4e89b6b90bd5da6ffead1404596f6eecba15ceb8d95b6a09dfbba4c0",
            "y_test_coarse": "48df17fb3bf299f43dd7e131db11ca0ea8b07d750be8b6dcf7ad6ff1b4cc721d",
        },
    ),
    "usps": Source(
        (Remote(_ESL + "zip.train.gz"), Remote(_ESL + "zip.test.gz")),
        {
            "x_train_milli": "19278ce4e0242e481c6dd79ee608eac38d318df582628cd12bb841fdf0568f44",
            "x_test_milli": "9c748d6be2e9da7d29b975c23c281f30a623fe85d17554cdeb3081ad123882f6",
            "y_train": "ee5027fd47b76715ac18ca27e72fa1332bde98e0b8ce593b503bb2bdb6c03da0",
            "y_test": "0b8b792b8ca1c5c704fd9d5bbd1b261623a359e6c8c65b23db428257beea7800",
        },
    ),
    "coil20": Source(
        (Remote(_COIL + "coil-20-proc.zip"),),
        {
            "x": "7274cbacb79ea6c57340827c9f9301745a8e9b3173dea4aa828e00b49c42946c",
            "y": "a22ff6e9fffd9ab9e6642d754011ea1bbd4849f7ef87061d969a97c0954a0825",
            "pose": "695754c0ed60c66a41ff01cd7c2ae05f19156d381ddb2b5a72e2d7c6a815867f",
        },
    ),
}

# Known lossy copies, by file sha256 (shared/data/README.md): size -> (sha256, why).
LOSSY_FILES: dict[int, tuple[str, str]] = {
    170_969_223: (
        "3b12430763a6ac0180de7c5de4afc91bacfbbb3e45b3024372fc526386cdde8a",
        "offline CIFAR-10: labels exact, pixels re-encoded as JPEG q75",
    ),
}


# Stored arrays per data set and split (shared/data/README.md): key -> (dtype, shape), None
# standing for the sample count, which agrees within a split. "a|b" asks for one of the keys
# (CIFAR-100: the full images or a partial copy's leading ``*_head`` images, at most as many as
# the labels); keys not listed (label names) are not checked.
_Spec = tuple[np.dtype, tuple[int | None, ...]]
_U8 = np.dtype(np.uint8)
_LABELS: _Spec = (_U8, (None,))
_RGB32: _Spec = (_U8, (None, 32, 32, 3))


def _splits(specs: Mapping[str, _Spec]) -> dict[str, dict[str, _Spec]]:
    return {s: {k.replace("{s}", s): spec for k, spec in specs.items()} for s in ("train", "test")}


SCHEMAS: dict[str, dict[str, dict[str, _Spec]]] = {
    "mnist": _splits({"x_{s}": (_U8, (None, 28, 28)), "y_{s}": _LABELS}),
    "usps": _splits(
        {
            "x_{s}": (_U8, (None, 16, 16)),
            "x_{s}_milli": (np.dtype(np.int16), (None, 16, 16)),
            "y_{s}": _LABELS,
        }
    ),
    "coil20": {"all": {"x": (_U8, (None, 128, 128)), "y": _LABELS, "pose": _LABELS}},
    "cifar10": _splits({"x_{s}": _RGB32, "y_{s}": _LABELS}),
    "cifar100": _splits(
        {"x_{s}|x_{s}_head": _RGB32, "y_{s}_fine": _LABELS, "y_{s}_coarse": _LABELS}
    ),
}


# --- resolution and download -------------------------------------------------------------


def data_dir() -> Path:
    """The directory searched for ``<name>.npz`` and written by downloads (SPEC §0.5)."""
    value = os.environ.get(ENV_VAR)
    folder = Path(value).expanduser() if value else DEFAULT_DIR.expanduser()
    return Path(os.path.abspath(folder))  # a relative value is taken from the cwd


def _check_name(name: str) -> None:
    if name not in SOURCES:
        raise ValueError(f"unknown data set; choose one of {', '.join(SOURCES)}. Received: {name=}")


def path(name: str, download: bool = True) -> Path:
    """Resolve ``<name>.npz`` in :func:`data_dir`, downloading it when missing.

    Args:
        name: one of ``NAMES``.
        download: try the canonical source when the file is missing. Defaults to True.

    Returns:
        The path of the npz file.

    Raises:
        DataNotFoundError: missing and not downloadable (offline: within seconds).
        ChecksumError: the download does not match its published digests.
    """
    _check_name(name)
    folder = data_dir()
    file = folder / f"{name}.npz"
    if file.is_file():
        return file
    hint = f"{name}.npz not found in {folder} (set {ENV_VAR} to the folder holding it)"
    if not download:
        raise DataNotFoundError(hint)
    try:
        return fetch(name, folder)
    except _DownloadError as exc:
        raise DataNotFoundError(f"{hint}; {exc}") from exc


def fetch(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Download, check and convert ``name`` into ``<directory>/<name>.npz`` (atomic write).

    Args:
        name: one of ``NAMES``.
        directory: target folder. Defaults to :func:`data_dir`.

    Returns:
        The path written.

    Raises:
        DataNotFoundError: the download failed (no network: within seconds).
        ChecksumError: archive or content digest mismatch (nothing is written).
    """
    _check_name(name)
    source = SOURCES[name]
    target = Path(directory) if directory is not None else data_dir()
    with tempfile.TemporaryDirectory(prefix=f"depthlab-{name}-") as tmp:
        files = [_download(remote, Path(tmp)) for remote in source.remotes]
        arrays = convert.CONVERTERS[name](*files)
    for key, want in source.content_sha256.items():
        got = array_sha256(arrays[key])
        if got != want:
            raise ChecksumError(f"{name}.npz array {key}: expected sha256 {want}, got {got}")
    problem = _schema_problem(name, arrays.keys(), lambda k: (arrays[k].shape, arrays[k].dtype))
    if problem:  # written, it would fail every read and be downloaded again in vain
        raise ChecksumError(f"{name}.npz converted: {problem}")
    return _save_atomic(arrays, target / f"{name}.npz")


def _download(remote: Remote, folder: Path) -> Path:
    out = folder / (Path(urlsplit(remote.url).path).name or "download")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(remote.url, timeout=TIMEOUT_S) as got, open(out, "wb") as f:
            for block in iter(lambda: got.read(1 << 20), b""):
                digest.update(block)
                f.write(block)
    except (urllib.error.URLError, OSError) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, "reason", exc)
        raise _DownloadError(f"download of {remote.url} failed: {reason}") from exc
    if remote.sha256 is not None and digest.hexdigest() != remote.sha256:
        raise ChecksumError(
            f"{out.name} from {remote.url}: expected sha256 {remote.sha256}, "
            f"got {digest.hexdigest()}"
        )
    return out


def _save_atomic(arrays: Mapping[str, np.ndarray], file: Path) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file


def array_sha256(array: np.ndarray) -> str:
    """SPEC §0.5 content digest: sha256 of the C-contiguous array bytes.

    The bytes are hashed in place (no copy): every first read of a file with published digests
    hashes its arrays, 55 MB for MNIST.
    """
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat).hexdigest()


def file_sha256(file: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- cached reading ----------------------------------------------------------------------


def _stamp(name: str) -> tuple[str, int, int]:
    file = path(name)
    stat = file.stat()
    return str(file), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _lossy(file: str, mtime_ns: int, size: int) -> bool:
    known = LOSSY_FILES.get(size)
    return known is not None and file_sha256(file) == known[0]


def is_lossy(name: str) -> bool:
    """True when ``name`` resolves to a known lossy copy (the offline CIFAR-10, JPEG q75).

    The file digest is computed once per (path, mtime, size) and only for files whose
    size matches a known lossy copy. Studies tag runs and tables with it (SPEC §0.2).
    """
    return _lossy(*_stamp(name))


def _corrupt(file: str, reason: str) -> DataCorruptError:
    reason = " ".join(reason.split())  # one line, whatever the underlying error says
    return DataCorruptError(f"{file} is corrupt ({reason}); delete it to download again")


@contextlib.contextmanager
def _corrupt_on_error(file: str, reason: str, detail: bool = True) -> Iterator[None]:
    """Re-raise what a damaged zip/npy makes zipfile, zlib or numpy raise as DataCorruptError.

    Args:
        file: the file read.
        reason: what failed, e.g. ``array x_train``.
        detail: append the underlying error to ``reason``. Defaults to True.
    """
    try:
        yield
    except (PermissionError, DataCorruptError):
        raise  # not damage / already explained
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as exc:
        # RuntimeError: zipfile on flipped flag bits (encrypted, unsupported method)
        raise _corrupt(file, f"{reason}: {exc}" if detail else reason) from exc


def _schema_problem(
    name: str, keys: Collection[str], header: Callable[[str], tuple[tuple[int, ...], np.dtype]]
) -> str | None:
    """Why arrays with these keys and (shape, dtype) headers do not fit SCHEMAS[name] (or None).

    Shared by :func:`fetch` (converted arrays) and :func:`_keys` (npy headers of a file).
    """
    for split in SCHEMAS.get(name, {}).values():
        rows: dict[str, int] = {}
        for choices, (dtype, shape) in split.items():
            key = next((k for k in choices.split("|") if k in keys), None)
            if key is None:
                return f"no array {choices.replace('|', ' or ')}"
            got_shape, got_dtype = header(key)
            if got_dtype != dtype:
                return f"array {key} has dtype {got_dtype}, expected {dtype}"
            if len(got_shape) != len(shape) or any(
                want not in (None, got) for want, got in zip(shape, got_shape, strict=True)
            ):
                want = str(tuple("N" if d is None else d for d in shape)).replace("'", "")
                return f"array {key} has shape {tuple(got_shape)}, expected {want}"
            rows[key] = got_shape[0]
        first, n = next((k, m) for k, m in rows.items() if not k.endswith("_head"))
        for key, got in rows.items():
            if got != n and not (key.endswith("_head") and got < n):  # a head: leading images
                return f"array {key} has {got} rows, {first} has {n}"
    return None


def _npy_header(file: str, archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an npz member from its .npy header; the data is not decompressed."""
    with _corrupt_on_error(file, f"array {key}"), archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0
        if version != (1, 0):
            read = np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return shape, dtype


@functools.lru_cache(maxsize=16)
def _file_digest(file: str, mtime_ns: int, size: int) -> str:
    return file_sha256(file)


def digest(names: Sequence[str]) -> str:
    """A short digest of the files ``names`` resolve to ("" for none), computed once per
    file version: part of a job's identity, so a result is reused only on the same data."""
    if not names:
        return ""
    parts = [f"{name}:{_file_digest(*_stamp(name))}" for name in sorted(set(names))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _keys(file: str, mtime_ns: int, size: int) -> frozenset[str]:
    """The array names of one file version, checked against :data:`SCHEMAS` when first read.

    Only the zip directory and the .npy headers are read (milliseconds, even for the 171 MB
    CIFAR-10), so a damaged file fails here with one clear error, not deep inside a run.

    Raises:
        DataCorruptError: not an npz, a missing key, a wrong dtype, shape or sample count.
    """
    with _corrupt_on_error(file, "not a zip archive: truncated or not an npz", detail=False):
        archive = zipfile.ZipFile(file)
    with archive:
        keys = frozenset(n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy"))
        header = functools.partial(_npy_header, file, archive)
        problem = _schema_problem(Path(file).stem, keys, header)
    if problem:
        raise _corrupt(file, problem)
    return keys


@functools.lru_cache(maxsize=32)
def _array(file: str, mtime_ns: int, size: int, key: str) -> np.ndarray:
    """One array of a checked file; its published content digest (SPEC §0.5) is verified.

    Arrays without a digest (CIFAR-10 pixels) rely on the zip CRC-32, which zipfile checks
    at the member's end: the read goes there even when numpy stops short of it.

    Raises:
        DataCorruptError: the file or the array is damaged.
        KeyError: the file has no such array.
    """
    _keys(file, mtime_ns, size)
    with (
        _corrupt_on_error(file, f"array {key}"),
        zipfile.ZipFile(file) as archive,
        archive.open(f"{key}.npy") as member,
    ):
        array = np.lib.format.read_array(member, allow_pickle=False)
        member.read()
    want = SOURCES[Path(file).stem].content_sha256.get(key)
    if want is not None and (got := array_sha256(array)) != want:
        raise _corrupt(file, f"array {key} has sha256 {got[:12]}..., expected {want[:12]}...")
    array.flags.writeable = False  # shared between callers
    return array


def keys(name: str) -> frozenset[str]:
    """The array names stored in ``<name>.npz``."""
    return _keys(*_stamp(name))


def array(name: str, key: str) -> np.ndarray:
    """One stored array, read once per process and returned read-only."""
    return _array(*_stamp(name), key)


# --- datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, H, W[, C]) and int64 labels ``y`` (N,), possibly read-only (shared)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A data set's splits; ``val`` is None where the recipe has no validation set."""

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    lossy: bool


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64)


def mnist() -> Dataset:
    """MNIST, 60,000 / 10,000 images 28x28 uint8 in file order (SPEC §0.5, §2.3)."""
    train = Split(array("mnist", "x_train"), _labels(array("mnist", "y_train")))
    test = Split(array("mnist", "x_test"), _labels(array("mnist", "y_test")))
    return Dataset("mnist", train, None, test, 10, is_lossy("mnist"))


def usps(milli: bool = False) -> Dataset:
    """USPS (ESL version), 7,291 / 2,007 images 16x16, standard split (SPEC §4.3).

    Args:
        milli: return the exact int16 values round(1000 * v), v in [-1, 1], instead of the
            uint8 rendering. Defaults to False.
    """
    suffix = "_milli" if milli else ""
    train = Split(array("usps", "x_train" + suffix), _labels(array("usps", "y_train")))
    test = Split(array("usps", "x_test" + suffix), _labels(array("usps", "y_test")))
    return Dataset("usps", train, None, test, 10, is_lossy("usps"))


def block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) images to (N, size, size) by exact block means (float32, 0..255)."""
    n, h, w = x.shape
    if h % size or w % size:
        raise ValueError(f"size must divide the image size {h}x{w}. Received: {size=}")
    blocks = x.reshape(n, size, h // size, size, w // size).astype(np.float32)
    return blocks.mean(axis=(2, 4), dtype=np.float32)


def coil20_indices(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The COIL-20 split (SPEC §4.3 READING): ``default_rng(seed).permutation(1440)``, the
    first 1,008 train, the last 432 test, in permutation order."""
    order = np.random.default_rng(seed).permutation(1440)
    return order[:1008], order[1008:]


def coil20(resize: int | None = 32, seed: int = 0) -> Dataset:
    """COIL-20 processed, 1,440 images of 20 objects x 72 poses (SPEC §4.3).

    Split: ``np.random.default_rng(seed).permutation(1440)``, first 1,008 train, last 432
    test, in permutation order (not stratified).

    Args:
        resize: output side by block mean (128 -> 32 averages 4x4 blocks), giving float32
            values in 0..255 that are exact multiples of 1/16; None keeps the uint8
            128x128 images. Defaults to 32.
        seed: split seed. Defaults to 0.
    """
    x = array("coil20", "x")
    if resize is not None:
        x = block_mean(x, resize)
    y = _labels(array("coil20", "y"))
    train, test = coil20_indices(seed)
    return Dataset(
        "coil20", Split(x[train], y[train]), None, Split(x[test], y[test]), 20, is_lossy("coil20")
    )


# --- CIFAR -------------------------------------------------------------------------------


def _cifar_name(num_classes: int) -> str:
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100. Received: {num_classes=}")
    return f"cifar{num_classes}"


SPLITS = ("coursework", "official", "head", "stratified")
STRATIFIED_SEED = 42  # the ConvNeXt quick profile's subsets (SPEC §1.5)


def stratified_indices(labels: np.ndarray, count: int, seed: int = STRATIFIED_SEED) -> np.ndarray:
    """``count`` indices with an equal share of every class (the first ``count % classes``
    classes get one more), each class's share drawn without replacement from a
    ``default_rng(seed)`` permutation of its indices; ascending.

    Raises:
        ValueError: a class has fewer images than its share.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    base, extra = divmod(int(count), len(classes))
    picked = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        share = base + (i < extra)
        if share > len(members):
            raise ValueError(f"class {c} has {len(members)} images, fewer than its share {share}")
        picked.append(rng.permutation(members)[:share])
    return np.sort(np.concatenate(picked))


def cifar_parts(split: str = "coursework", train_images: int = 0, val_images: int = 0,
                test_images: int = 0, num_classes: int = 10
                ) -> dict[str, tuple[str, np.ndarray]]:
    """Each part's (file part, indices into it): the one definition of the CIFAR splits.

    Args:
        split: "coursework" (SPEC §3.3): train = ``RandomState(0).choice(50000, 47500,
            replace=False)`` in that order, val = the other 2,500 ascending; "official":
            train = all 50,000, no val; "head" (the VGG quick profile, SPEC §3.5): train =
            the first ``train_images`` of the training file in file order, val = the
            coursework validation images outside that head (the first 2,048 hold 95 of
            them: train and val stay disjoint); "stratified" (the ConvNeXt quick profile,
            SPEC §1.5): train and test as "official", ``train_images`` / ``test_images``
            choose class-balanced subsets (:func:`stratified_indices`, seed 42), no val.
            Test is the test file's order in all.
        train_images, val_images, test_images: keep the first N of the part; 0 keeps all.
        num_classes: 10 or 100 (the labels a stratified split balances). Defaults to 10.

    Returns:
        {"train": ("train", idx), "val": ("train", idx), "test": ("test", idx)}.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Received: {split=}")
    train = _coursework_train()
    val = np.setdiff1d(np.arange(50_000), train)
    if split == "stratified":
        train, val = np.arange(50_000), np.arange(0)
        test = np.arange(10_000)
        if train_images:
            train = stratified_indices(cifar_labels(num_classes, "train"), train_images)
        if test_images:
            test = stratified_indices(cifar_labels(num_classes, "test"), test_images)
        return {"train": ("train", train), "val": ("train", val), "test": ("test", test)}
    if split == "official":
        train, val = np.arange(50_000), np.arange(0)
    elif split == "head":
        train, val = np.arange(train_images), val[val >= train_images]
    counts = {"train": train_images, "val": val_images, "test": test_images}
    parts = {"train": ("train", train), "val": ("train", val), "test": ("test", np.arange(10_000))}
    return {part: (source, idx[: counts[part]] if counts[part] else idx)
            for part, (source, idx) in parts.items()}


def cifar_indices(part: str, split: str = "coursework") -> np.ndarray:
    """Indices of one part of a split in the file it comes from (see :func:`cifar_parts`)."""
    if part not in ("train", "val", "test"):
        raise ValueError(f'part must be "train", "val" or "test". Received: {part=}')
    return cifar_parts(split)[part][1]


@functools.lru_cache(maxsize=1)
def _coursework_train() -> np.ndarray:
    train = np.random.RandomState(0).choice(50_000, 47_500, replace=False)
    train.flags.writeable = False
    return train


def cifar_labels(num_classes: int, source: str, coarse: bool = False) -> np.ndarray:
    """All labels of the "train" or "test" file (fine labels for CIFAR-100 by default)."""
    name = _cifar_name(num_classes)
    key = f"y_{source}" + ("" if num_classes == 10 else "_coarse" if coarse else "_fine")
    return _labels(array(name, key))


def cifar_available(num_classes: int, source: str) -> int:
    """How many leading images of the "train"/"test" file the resolved copy holds."""
    name = _cifar_name(num_classes)
    if f"x_{source}" in keys(name):
        return len(array(name, f"y_{source}" + ("" if num_classes == 10 else "_fine")))
    if f"x_{source}_head" in keys(name):
        return len(array(name, f"x_{source}_head"))
    raise DataNotFoundError(f"{name}.npz in {data_dir()} holds no {source} images")


def cifar_images(num_classes: int, source: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Images (N, 32, 32, 3) uint8 of the "train"/"test" file at ``indices``.

    Raises:
        PartialDataError: at once, when an index lies beyond a partial copy's images.
    """
    name = _cifar_name(num_classes)
    idx = np.asarray(indices, dtype=np.int64)
    if f"x_{source}" in keys(name):
        return array(name, f"x_{source}")[idx]
    held = cifar_available(num_classes, source)
    if idx.size and int(idx.max()) >= held:
        raise PartialDataError(
            f"{name}.npz in {data_dir()} is a partial copy: it holds only the first {held} "
            f"{source} images (all labels), index {int(idx.max())} was requested; get the "
            f"full copy with depthlab.data.fetch({name!r}, DIR) where the network is "
            f"reachable and set {ENV_VAR}=DIR"
        )
    return array(name, f"x_{source}_head")[idx]


def cifar_split(num_classes: int, part: str, split: str = "coursework") -> Split:
    """One part of a split, all its images; fails at once beyond a partial copy."""
    dataset = cifar(num_classes, split)
    return dataset.val if part == "val" else getattr(dataset, part)


def cifar(num_classes: int = 10, split: str = "coursework", train_images: int = 0,
          val_images: int = 0, test_images: int = 0) -> Dataset:
    """CIFAR-10/100 with a split of :func:`cifar_parts` (fine labels for CIFAR-100).

    Only the images the parts hold are read, so a partial offline copy serves what it holds
    and fails at once beyond it; the arrays are cached per process (read-only).

    Raises:
        PartialDataError: the request reaches beyond a partial copy (the offline CIFAR-100).
    """
    name = _cifar_name(num_classes)
    return _cifar(num_classes, split, train_images, val_images, test_images, _stamp(name))


@functools.lru_cache(maxsize=4)
def _cifar(num_classes: int, split: str, train_images: int, val_images: int,
           test_images: int, stamp: tuple) -> Dataset:
    name = _cifar_name(num_classes)
    parts = {}
    for part, (source, idx) in cifar_parts(split, train_images, val_images, test_images,
                                           num_classes).items():
        x = cifar_images(num_classes, source, idx)
        y = cifar_labels(num_classes, source)[idx]
        x.flags.writeable = y.flags.writeable = False
        parts[part] = Split(x, y)
    val = parts["val"] if split not in ("official", "stratified") else None
    return Dataset(name, parts["train"], val, parts["test"], num_classes, is_lossy(name))


LOADERS: dict[str, Any] = {
    "mnist": mnist,
    "usps": usps,
    "coil20": coil20,
    "cifar10": functools.partial(cifar, 10),
    "cifar100": functools.partial(cifar, 100),
}


def load(name: str, **kwargs: Any) -> Dataset:
    """Load a data set by name (``NAMES``), passing loader options on."""
    _check_name(name)
    return LOADERS[name](**kwargs)
