"""depthlab.data and depthlab.augment (SPEC §0.5, §3.3, §4.3, shared/data/README.md).

Real offline copies for counts and splits; small archives built here, in the canonical
formats, for conversion and checksums (served from file:// URLs: nothing is downloaded).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from depthlab import augment, convert, data

SHARED_DATA = Path(os.environ["DEPTHLAB_DATA_DIR"])  # set by conftest.py

# ---------------------------------------------------------------- resolution, errors


def test_data_dir_relative_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", "rel/dir")
    assert data.data_dir() == tmp_path / "rel" / "dir"
    monkeypatch.delenv("DEPTHLAB_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_dir() == tmp_path / "home" / ".cache" / "depthlab"


def test_offline_resolution():
    assert data.data_dir().resolve() == SHARED_DATA.resolve()
    assert data.path("usps").resolve() == SHARED_DATA.resolve() / "usps.npz"
    with pytest.raises(ValueError, match="Received: name='svhn'"):
        data.path("svhn")


def test_missing_file_fails_fast_offline(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(empty))
    # an unroutable local port: refused at once, never a remote host
    dead = data.Source((data.Remote("http://127.0.0.1:9/zip.train.gz"),))
    monkeypatch.setitem(data.SOURCES, "usps", dead)
    start = time.monotonic()
    with pytest.raises(data.DataNotFoundError) as info:
        data.usps()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "usps.npz" in message and str(empty) in message and "DEPTHLAB_DATA_DIR" in message
    assert "\n" not in message
    assert isinstance(info.value, FileNotFoundError)
    assert not empty.exists()  # nothing written, not even the folder
    with pytest.raises(data.DataNotFoundError, match="usps.npz not found"):
        data.path("usps", download=False)


# ---------------------------------------------------------------- real offline copies


def counts(y: np.ndarray, n: int) -> list[int]:
    return np.bincount(y, minlength=n).tolist()


def test_mnist_counts():
    ds = data.mnist()
    assert ds.train.x.shape == (60000, 28, 28) and ds.train.x.dtype == np.uint8
    assert ds.test.x.shape == (10000, 28, 28) and ds.val is None
    assert counts(ds.train.y, 10) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert counts(ds.test.y, 10) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.train.y.dtype == np.int64
    assert not ds.lossy and not data.is_lossy("mnist")


def test_usps_counts_and_uint8_rendering():
    ds = data.usps()
    assert ds.train.x.shape == (7291, 16, 16) and ds.test.x.shape == (2007, 16, 16)
    assert counts(ds.train.y, 10) == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    assert counts(ds.test.y, 10) == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    milli = data.usps(milli=True)
    assert milli.train.x.dtype == np.int16 and milli.train.x.min() == -1000
    # the converter's uint8 rendering reproduces the offline arrays exactly
    assert np.array_equal(convert.usps_uint8(milli.test.x), ds.test.x)


def test_coil20_split_and_resize():
    ds = data.coil20()
    assert counts(data.array("coil20", "y"), 20) == [72] * 20
    assert (len(ds.train), len(ds.test), ds.num_classes) == (1008, 432, 20)
    order = np.random.default_rng(0).permutation(1440)
    raw = data.array("coil20", "x")
    first = order[0]
    assert ds.train.y[0] == first // 72  # rows are object-major (row = 72 * y + pose)
    # 4x4 block mean, checked on one output pixel by hand
    assert ds.train.x.shape == (1008, 32, 32) and ds.train.x.dtype == np.float32
    assert ds.train.x[0, 5, 7] == raw[first, 20:24, 28:32].astype(np.float64).mean()
    assert ds.test.y[-1] == order[-1] // 72
    full = data.coil20(resize=None, seed=1)
    assert full.train.x.dtype == np.uint8 and full.train.x.shape == (1008, 128, 128)
    assert np.array_equal(full.test.x[0], raw[np.random.default_rng(1).permutation(1440)[1008]])


def test_cifar_coursework_split_indices():
    train = data.cifar_indices("train")
    assert train[:10].tolist() == [
        11841, 19602, 45519, 25747, 42642, 31902, 30346, 12363, 32490, 26128,
    ]  # fmt: skip
    val = data.cifar_indices("val")
    assert len(train) == 47500 and len(val) == 2500
    assert val[:5].tolist() == [52, 55, 63, 81, 93] and val[-1] == 49994
    assert int(val.sum()) == 62_248_100
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50000))
    assert np.array_equal(data.cifar_indices("test"), np.arange(10000))
    assert len(data.cifar_indices("train", "official")) == 50000
    assert len(data.cifar_indices("val", "official")) == 0


def test_cifar10_dataset():
    ds = data.cifar(10)
    assert (ds.name, ds.num_classes, ds.lossy) == ("cifar10", 10, True)
    assert ds.train.x.shape == (47500, 32, 32, 3) and ds.train.x.dtype == np.uint8
    assert (len(ds.val), len(ds.test)) == (2500, 10000)
    x_train, y_train = data.array("cifar10", "x_train"), data.array("cifar10", "y_train")
    assert np.array_equal(ds.train.x[0], x_train[11841]) and ds.train.y[0] == y_train[11841]
    assert np.array_equal(ds.val.x[-1], x_train[49994])
    assert ds.test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert counts(ds.test.y, 10) == [1000] * 10
    assert counts(data.cifar_labels(10, "train"), 10) == [5000] * 10
    assert data.is_lossy("cifar10")
    assert data._lossy.cache_info().hits >= 1  # the 171 MB digest is computed once


def test_cifar100_partial_copy():
    fine = data.cifar_labels(100, "train")
    assert len(fine) == 50000 and counts(fine, 100) == [500] * 100
    assert data.cifar_labels(100, "test")[:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    assert counts(data.cifar_labels(100, "test", coarse=True), 20) == [500] * 20
    assert data.cifar_available(100, "train") == 486
    assert data.cifar_available(100, "test") == 916
    # requests within the copy are served: e.g. the coursework train images it holds
    train = data.cifar_indices("train")
    held = train[train < 486]
    images = data.cifar_images(100, "train", held)
    assert images.shape == (len(held), 32, 32, 3) and len(held) > 400
    head = data.array("cifar100", "x_test_head")
    assert np.array_equal(data.cifar_images(100, "test", [0, 915]), head[[0, 915]])
    start = time.monotonic()
    with pytest.raises(data.PartialDataError, match="partial copy.*first 486 train") as info:
        data.cifar(100)
    assert time.monotonic() - start < 2
    assert isinstance(info.value, data.DataNotFoundError) and "cifar100.npz" in str(info.value)
    with pytest.raises(data.PartialDataError, match="index 486"):
        data.cifar_images(100, "train", [0, 486])
    with pytest.raises(data.PartialDataError):
        data.cifar_split(100, "val")
    assert not data.is_lossy("cifar100")


# ---------------------------------------------------------------- conversion, checksums


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def cifar_rows(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def tar_gz(members: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def build_cifar10(rng):
    x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 12).astype(np.uint8)
    members = {
        f"cifar-10-batches-py/data_batch_{i + 1}": {
            b"data": cifar_rows(x[2 * i : 2 * i + 2]),
            b"labels": y[2 * i : 2 * i + 2].tolist(),
        }
        for i in range(5)
    }
    members["cifar-10-batches-py/test_batch"] = {
        b"data": cifar_rows(x[10:]),
        b"labels": y[10:].tolist(),
    }
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"] + [b"n"] * 5
    members["cifar-10-batches-py/batches.meta"] = {b"label_names": names}
    want = {"x_train": x[:10], "y_train": y[:10], "x_test": x[10:], "y_test": y[10:]}
    return [("cifar-10-python.tar.gz", tar_gz(members))], want


def build_cifar100(rng):
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    fine, coarse = [7, 99, 0, 3, 42], [1, 19, 0, 2, 5]
    members = {
        "cifar-100-python/train": {
            b"data": cifar_rows(x[:3]), b"fine_labels": fine[:3], b"coarse_labels": coarse[:3]
        },
        "cifar-100-python/test": {
            b"data": cifar_rows(x[3:]), b"fine_labels": fine[3:], b"coarse_labels": coarse[3:]
        },
        "cifar-100-python/meta": {
            b"fine_label_names": [b"apple"] * 100, b"coarse_label_names": [b"fish"] * 20
        },
    }  # fmt: skip
    u8 = np.uint8
    want = {
        "x_train": x[:3], "y_train_fine": np.array(fine[:3], u8), "x_test": x[3:],
        "y_test_coarse": np.array(coarse[3:], u8),
    }  # fmt: skip
    return [("cifar-100-python.tar.gz", tar_gz(members))], want


def build_usps(rng):
    files, want = [], {}
    for part, n in (("train", 4), ("test", 3)):
        milli = rng.integers(-1000, 1001, (n, 256)).astype(np.int16)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        lines = [
            " ".join([f"{lab:.4f}"] + [f"{v / 1000:.4f}" for v in row]) + " \n"
            for lab, row in zip(labels, milli, strict=True)
        ]
        files.append((f"zip.{part}.gz", gzip.compress("".join(lines).encode())))
        want |= {f"x_{part}_milli": milli.reshape(n, 16, 16), f"y_{part}": labels}
        want[f"x_{part}"] = convert.usps_uint8(want[f"x_{part}_milli"])
    return files, want


def build_coil20(rng):
    x = rng.integers(0, 256, (6, 128, 128), dtype=np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for row in (4, 0, 5, 2, 1, 3):  # archive order differs from the row order
            png = io.BytesIO()
            Image.fromarray(x[row]).save(png, format="PNG")
            zf.writestr(f"coil-20-proc/obj{row // 3 + 1}__{row % 3}.png", png.getvalue())
    want = {"x": x, "y": np.repeat(np.arange(2, dtype=np.uint8), 3)}
    want["pose"] = np.tile(np.arange(3, dtype=np.uint8), 2)
    return [("coil-20-proc.zip", buf.getvalue())], want


def build_mnist(rng):
    want = {
        "x_train": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "y_train": np.array([5, 0, 4], np.uint8),
        "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "y_test": np.array([7, 2], np.uint8),
    }
    buf = io.BytesIO()
    np.savez(buf, **want)
    return [("mnist.npz", buf.getvalue())], want


BUILDERS = {
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "usps": build_usps,
    "coil20": build_coil20,
    "mnist": build_mnist,
}


def serve(name, tmp_path, monkeypatch, archive_sha=True, content=None):
    """Write the small archives, point SOURCES[name] at them and the data dir at tmp."""
    files, want = BUILDERS[name](np.random.default_rng(7))
    remotes = []
    for filename, blob in files:
        (tmp_path / filename).write_bytes(blob)
        digest = sha(blob) if archive_sha is True else archive_sha
        remotes.append(data.Remote((tmp_path / filename).as_uri(), digest))
    if content is None:
        content = {key: data.array_sha256(value) for key, value in want.items()}
    monkeypatch.setitem(data.SOURCES, name, data.Source(tuple(remotes), content))
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "cache"))
    return want


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_conversion_round_trip(name, tmp_path, monkeypatch):
    want = serve(name, tmp_path, monkeypatch)
    file = data.path(name)
    assert file == tmp_path / "cache" / f"{name}.npz"
    assert [p.name for p in file.parent.iterdir()] == [file.name]  # atomic: no temp left
    with np.load(file) as npz:
        with np.load(SHARED_DATA / f"{name}.npz") as offline:  # a full copy: no *_head
            assert set(npz.files) == {key.removesuffix("_head") for key in offline.files}
        for key, value in want.items():
            assert npz[key].dtype == value.dtype and np.array_equal(npz[key], value), key


def test_converted_cifar100_serves_full_copy(tmp_path, monkeypatch):
    want = serve("cifar100", tmp_path, monkeypatch)
    assert data.cifar_available(100, "train") == 3
    assert np.array_equal(data.cifar_images(100, "train", [2, 0]), want["x_train"][[2, 0]])
    assert data.cifar_labels(100, "test", coarse=True).tolist() == [2, 5]
    assert {"x_train", "x_test"} <= data.keys("cifar100")


def test_archive_checksum_mismatch(tmp_path, monkeypatch):
    serve("cifar10", tmp_path, monkeypatch, archive_sha="0" * 64)
    with pytest.raises(data.ChecksumError) as info:
        data.path("cifar10")
    message = str(info.value)
    got = sha((tmp_path / "cifar-10-python.tar.gz").read_bytes())
    assert "cifar-10-python.tar.gz" in message and "0" * 64 in message and got in message
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "cache").exists()


def test_content_checksum_mismatch(tmp_path, monkeypatch):
    want = serve("usps", tmp_path, monkeypatch, archive_sha=None, content={"y_test": "f" * 64})
    with pytest.raises(data.ChecksumError, match="usps.npz array y_test") as info:
        data.path("usps")
    assert data.array_sha256(want["y_test"]) in str(info.value) and "f" * 64 in str(info.value)
    assert not (tmp_path / "cache" / "usps.npz").exists()


def test_cifar_pickle_refuses_foreign_globals(tmp_path):
    bad = {"cifar-100-python/train": {b"data": Path("x")}}  # pickles a pathlib global
    (tmp_path / "bad.tar.gz").write_bytes(tar_gz(bad))
    with pytest.raises(pickle.UnpicklingError, match="unexpected global pathlib"):
        convert.convert_cifar100(tmp_path / "bad.tar.gz")


def test_real_content_digests_match_offline_copies():
    for name in ("usps", "coil20", "cifar100"):
        for key, digest in data.SOURCES[name].content_sha256.items():
            assert data.array_sha256(data.array(name, key)) == digest, (name, key)


# ---------------------------------------------------------------- corrupt files


def rewrite(name, edit):
    """A corrupt copy: the offline file's bytes changed by ``edit``."""
    return lambda folder: (folder / f"{name}.npz").write_bytes(
        edit((SHARED_DATA / f"{name}.npz").read_bytes())
    )


def resave(name, drop=None, save=np.savez_compressed, **edits):
    """A well-formed npz with the offline arrays, one dropped or changed by ``edits``."""

    def write(folder):
        with np.load(SHARED_DATA / f"{name}.npz") as npz:
            arrays = {key: npz[key] for key in npz.files if key != drop}
        save(folder / f"{name}.npz", **{k: edits.get(k, lambda a: a)(a) for k, a in arrays.items()})

    return write


def flip_inside(blob, member):
    """Flip one byte in the middle of a member's compressed data (its CRC-32 then fails)."""
    info = zipfile.ZipFile(io.BytesIO(blob)).getinfo(member)
    out = bytearray(blob)
    out[info.header_offset + info.compress_size // 2] ^= 0xFF
    return bytes(out)


def swap_two(y):
    """Same shape, dtype and label counts; other content."""
    y = y.copy()
    j = int(np.flatnonzero(y != y[0])[0])
    y[[0, j]] = y[[j, 0]]
    return y


NOT_ZIP = "not a zip archive: truncated or not an npz"
CORRUPTIONS = {
    "zero-byte": ("usps", rewrite("usps", lambda b: b""), NOT_ZIP),
    "truncated": ("usps", rewrite("usps", lambda b: b[: len(b) // 2]), NOT_ZIP),
    "bit-flip": (
        "usps",
        rewrite("usps", lambda b: flip_inside(b, "x_train.npy")),
        "array x_train: Bad CRC-32 for file 'x_train.npy'",
    ),
    "missing-key": ("usps", resave("usps", drop="y_test"), "no array y_test"),
    "wrong-shape": (
        "mnist",
        resave("mnist", save=np.savez, x_train=lambda x: x[:, :, :27]),
        "array x_train has shape (60000, 28, 27), expected (N, 28, 28)",
    ),
    "wrong-dtype": (
        "usps",
        resave("usps", x_test_milli=lambda x: x.astype(np.int32)),
        "array x_test_milli has dtype int32, expected int16",
    ),
    "row-count": (
        "usps",
        resave("usps", y_test=lambda y: y[:-1]),
        "array y_test has 2006 rows, x_test has 2007",
    ),
    "digest": (
        "usps",
        resave("usps", y_train=swap_two),
        "array y_train has sha256 ",  # then the digest of the swapped labels
    ),
}


def assert_corrupt_message(error, file, reason):
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{file} is corrupt (") and file.is_absolute()
    assert message.endswith("; delete it to download again")
    assert f"({reason}" in message


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_file_raises_one_clear_error(case, tmp_path, monkeypatch):
    name, write, reason = CORRUPTIONS[case]
    write(tmp_path)
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataCorruptError) as info:
        data.load(name)
    assert isinstance(info.value, ValueError)
    assert_corrupt_message(info.value, tmp_path / f"{name}.npz", reason)
    if case == "digest":
        assert "expected ee5027fd47b7...)" in str(info.value)  # SOURCES["usps"] y_train


def test_corrupt_file_checked_once_per_version(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path))
    good = (SHARED_DATA / "usps.npz").read_bytes()
    file = tmp_path / "usps.npz"
    file.write_bytes(good[:1000])
    with pytest.raises(data.DataCorruptError, match="not a zip archive"):
        data.keys("usps")
    file.write_bytes(good)  # a new stamp: size and mtime change, so it is checked anew
    assert len(data.usps().test) == 2007
    checks = data._keys.cache_info().misses
    data.usps(milli=True)
    assert data._keys.cache_info().misses == checks


def test_structure_check_reads_headers_only():
    start = time.monotonic()
    keys = data._keys.__wrapped__(*data._stamp("cifar10"))  # uncached: the 171 MB file
    assert time.monotonic() - start < 0.5
    assert {"x_train", "y_train", "x_test", "y_test", "label_names"} == keys


def test_fetch_refuses_converted_arrays_off_schema(tmp_path, monkeypatch):
    bad = {k: np.zeros(s, np.uint8) for k, s in (("x_train", (3, 28, 27)), ("y_train", 3))}
    bad |= {"x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)}
    np.savez(tmp_path / "mnist.npz", **bad)
    remote = data.Remote((tmp_path / "mnist.npz").as_uri())
    monkeypatch.setitem(data.SOURCES, "mnist", data.Source((remote,)))
    with pytest.raises(data.ChecksumError, match=r"x_train has shape \(3, 28, 27\)"):
        data.fetch("mnist", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- augmentation, pipeline


def window(padded: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    crop = padded[dy : dy + 8, dx : dx + 8]
    return crop[:, ::-1] if flip else crop


def test_crop_flip_per_image():
    image = (np.arange(64, dtype=np.uint8) + 1).reshape(8, 8, 1)  # every pixel distinct
    batch = np.repeat(image[None], 64, axis=0)  # 64 identical images
    out = augment.random_crop_flip(batch, np.random.default_rng(0), pad=4)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    candidates = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
    found = []
    for crop in out:
        matches = [c for c in candidates if np.array_equal(crop, window(padded, *c))]
        assert len(matches) == 1, "each output is one window of the zero-padded image"
        found.append(matches[0])
    assert len({m[:2] for m in found}) > 10  # independent offsets per image
    assert {m[2] for m in found} == {False, True}


def test_padding_value_and_normalisation():
    x = np.full((16, 32, 32, 3), 255, np.uint8)
    ds = augment.ImageBatches(
        x, np.zeros(16), 16, mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD, augment=True
    )
    batch, _ = ds[0]
    assert batch.dtype == np.float32 and batch.shape == (16, 32, 32, 3)
    mean, std = np.array(augment.CIFAR10_MEAN), np.array(augment.CIFAR10_STD)
    pad, body = -mean / std, (1 - mean) / std
    assert pad[0] == pytest.approx(-2.4290657, rel=1e-6)  # -0.4914 / 0.2023
    is_pad = np.isclose(batch, pad, rtol=1e-6)
    assert np.all(is_pad | np.isclose(batch, body, rtol=1e-6))
    assert 0 < is_pad.mean() < 0.5


def test_flip_only():
    x = np.random.default_rng(1).integers(0, 256, (32, 5, 6, 2), dtype=np.uint8)
    out = augment.random_crop_flip(x, np.random.default_rng(2), pad=0)
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x, strict=True)])
    same = np.array([np.array_equal(o, i) for o, i in zip(out, x, strict=True)])
    assert np.all(flipped | same) and 0 < flipped.sum() < 32


def all_batches(ds):
    return [ds[i] for i in range(len(ds))]


def test_batches_len_shuffle_and_determinism():
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10)
    kept = augment.ImageBatches(x, y, 4, augment=True, shuffle=True, seed=5)
    assert len(kept) == 3 and len(kept[2][1]) == 2
    assert len(augment.ImageBatches(x, y, 4, drop_last=True)) == 2
    with pytest.raises(IndexError):
        kept[3]
    epochs = []
    for _ in range(3):
        epochs.append(all_batches(kept))
        kept.on_epoch_end()
    assert kept.epoch == 3
    for batches in epochs:
        assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == list(range(10))
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])  # reshuffled
    resumed = augment.ImageBatches(x, y, 4, augment=True, shuffle=True, seed=5, start_epoch=2)
    for (xa, ya), (xb, yb) in zip(epochs[2], all_batches(resumed), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    other = augment.ImageBatches(x, y, 4, augment=True, shuffle=True, seed=6, start_epoch=2)
    assert not np.array_equal(other[0][0], epochs[2][0][0])
    # a pass that does not serve every batch (Keras' first peek) is not counted
    kept[0]
    kept.on_epoch_end()
    assert kept.epoch == 3


def test_grayscale_and_eval_splits_unaugmented():
    x = data.array("cifar10", "x_test")[:20]
    y = data.cifar_labels(10, "test")[:20]
    ds = data.Dataset("cifar10", data.Split(x, y), data.Split(x, y), data.Split(x, y), 10, True)
    pipes = augment.split_batches(ds, 8, seed=0)
    plain = augment.normalize(x, augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    for part in ("val", "test"):
        got = np.concatenate([b[0] for b in all_batches(pipes[part])])
        assert np.array_equal(got, plain), part
    assert pipes["train"].augment and pipes["train"].shuffle
    train = np.concatenate([b[0] for b in all_batches(pipes["train"])])
    assert not np.allclose(np.sort(train, axis=None), np.sort(plain, axis=None))
    grey = augment.ImageBatches(data.array("usps", "x_test")[:5], np.zeros(5), 5, augment=True)
    assert grey[0][0].shape == (5, 16, 16)


def test_fit_counts_epochs():
    x = data.array("cifar10", "x_test")[:20]
    y = data.cifar_labels(10, "test")[:20]
    kwargs = dict(mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD, augment=True, shuffle=True)
    ds = augment.ImageBatches(x, y, 8, **kwargs)  # 3 batches, the last one partial
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and len(history.history["loss"]) == 2
    assert ds.epoch == 2
    model.fit(
        ds, epochs=4, initial_epoch=3, shuffle=False, verbose=0, callbacks=[ds.epoch_callback()]
    )
    assert ds.epoch == 4  # set to 3 at the resumed epoch's start, one full pass


def test_repeat_streams_passes_for_exact_step_counts():
    """Keras stops a finite dataset at its end inside an epoch; ``repeat`` streams passes
    so ``steps_per_epoch`` that does not divide a pass still gives every step."""
    import keras

    from depthlab.augment import ImageBatches

    x = np.arange(40 * 4 * 4, dtype=np.uint8).reshape(40, 4, 4)
    y = np.arange(40)
    stream = ImageBatches(x, y, batch_size=10, shuffle=True, seed=3, repeat=True)
    single = ImageBatches(x, y, batch_size=10, shuffle=True, seed=3)
    assert stream.num_batches is None and len(stream) == 4
    single.epoch = 1
    np.testing.assert_array_equal(stream[5][1], single[1][1])  # pass 1, batch 1
    assert sorted(np.concatenate([stream[i][1] for i in range(4, 8)])) == list(range(40))

    class Count(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.steps += 1

    model = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(stream, epochs=3, steps_per_epoch=3, shuffle=False, verbose=0, callbacks=[Count()])
    assert Count.steps == 9


def test_repeat_stream_resumes_where_it_stopped():
    """A fit resumed at epoch 2 trains on the batches the uninterrupted fit saw there:
    with plain SGD both end with the same weights."""
    x = np.arange(40 * 4 * 4, dtype=np.uint8).reshape(40, 4, 4)
    y = (np.arange(40) % 7).astype(np.float32)

    def stream():
        return augment.ImageBatches(x, y, batch_size=10, shuffle=True, seed=3, repeat=True)

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dense(1)])
        m.compile(keras.optimizers.SGD(0.01), "mse")
        return m

    def fit(m, data, **kwargs):
        m.fit(data, steps_per_epoch=3, shuffle=False, verbose=0,
              callbacks=[data.epoch_callback()], **kwargs)

    whole = model()
    fit(whole, stream(), epochs=4)
    resumed = model()
    fit(resumed, stream(), epochs=2)
    fit(resumed, stream(), epochs=4, initial_epoch=2)  # a new process would build it anew
    restarted = model()
    fit(restarted, stream(), epochs=2)
    restarted.fit(stream(), epochs=4, initial_epoch=2, steps_per_epoch=3, shuffle=False,
                  verbose=0)  # without the callback the stream starts over
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(whole.get_weights()[0], restarted.get_weights()[0], rtol=1e-6)


def test_flatten_is_channel_major_as_torchvision():
    """SPEC §2.3: ToTensor (C, H, W) then view(-1); grey images flatten row by row."""
    from depthlab.augment import ImageBatches

    x = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)  # N, H, W, C
    batch, _ = ImageBatches(x, np.zeros(2), batch_size=2, flatten=True)[0]
    expected = x.transpose(0, 3, 1, 2).reshape(2, -1).astype(np.float32) / 255
    np.testing.assert_array_equal(batch, expected)
    grey, _ = ImageBatches(x[..., 0], np.zeros(2), batch_size=2, flatten=True)[0]
    np.testing.assert_array_equal(grey, x[..., 0].reshape(2, -1).astype(np.float32) / 255)


def test_color_jitter_is_torchvisions_arithmetic_per_image():
    """SPEC §1.3: each image draws its own factors and order; each adjustment is
    torchvision's tensor formula (brightness scales, contrast blends with the grayscale
    mean, saturation with the grayscale image), clamped to [0, 1]."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 4, 4, 3)).astype("float32")
    gray_w = np.array([0.2989, 0.587, 0.114], "float32")

    def brightness(img, f):
        return np.clip(img * f, 0, 1)

    def contrast(img, f):
        return np.clip(f * img + (1 - f) * (img @ gray_w).mean(), 0, 1)

    def saturation(img, f):
        return np.clip(f * img + (1 - f) * (img @ gray_w)[..., None], 0, 1)

    ops_ = (brightness, contrast, saturation)
    out = augment.color_jitter(x, np.random.default_rng(1))
    draw = np.random.default_rng(1)  # the same stream: factors, then orders
    factors = draw.uniform([0.8] * 3, [1.2] * 3, size=(64, 3)).astype("float32")
    orders = np.argsort(draw.random((64, 3)), axis=1)
    for i in range(64):
        want = x[i]
        for op in orders[i]:
            want = ops_[op](want, factors[i, op])
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)
    assert len({tuple(o) for o in orders}) == 6  # every order occurs
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32
    same = augment.color_jitter(x, np.random.default_rng(1), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(same, x)  # zero strength: identity


def test_stratified_subsets_are_balanced_deterministic_and_disjoint():
    """SPEC §1.5: 2,560 training / 1,000 validation images, class-balanced, seed 42."""
    parts = data.cifar_parts("stratified", 2560, 0, 1000)
    train, test = parts["train"][1], parts["test"][1]
    assert parts["train"][0] == "train" and parts["test"][0] == "test" and not len(parts["val"][1])
    assert len(train) == 2560 == len(np.unique(train)) and len(test) == 1000
    counts = np.bincount(data.cifar_labels(10, "train")[train], minlength=10)
    assert counts.tolist() == [256] * 10
    assert np.bincount(data.cifar_labels(10, "test")[test]).tolist() == [100] * 10
    np.testing.assert_array_equal(train, data.cifar_parts("stratified", 2560)["train"][1])
    dataset = data.cifar(10, "stratified", 2560, 0, 1000)
    assert dataset.val is None and dataset.train.x.shape == (2560, 32, 32, 3)
    assert data.stratified_indices(np.arange(10) % 3, 4).tolist() == sorted(
        data.stratified_indices(np.arange(10) % 3, 4).tolist())
    with pytest.raises(ValueError, match="fewer than its share"):
        data.stratified_indices(np.array([0, 0, 1]), 4)
