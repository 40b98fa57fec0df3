"""Per-image augmentation and the numpy input pipeline for ``model.fit`` (SPEC §0.5, §3.3).

Keras' batched ``RandomCrop`` draws one offset per batch; here every image draws its own
crop offset and flip, in numpy, so the pipeline is the same on every backend and needs no
TensorFlow. Randomness is a pure function of (seed, epoch, batch index): a resumed run that
starts at epoch e sees exactly the batches an uninterrupted run saw at epoch e.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from depthlab.data import Dataset

# torchvision's CIFAR-10 statistics; the coursework uses them for both CIFARs (SPEC §3.3).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def random_crop_flip(
    images: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True
) -> np.ndarray:
    """Random crop with ``pad`` zero padding, then horizontal flip p=0.5, per image.

    Args:
        images: (N, H, W, C) array (uint8 in the recipes; padding is 0 before scaling).
        rng: numpy Generator the offsets (then the flips) are drawn from.
        pad: zero padding on each side; offsets are uniform in 0..2*pad. Defaults to 4.
        flip: also flip each image with probability 0.5. Defaults to True.

    Returns:
        An array of the same shape and dtype.
    """
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    rows = offsets[:, :1] + np.arange(h)  # (n, h)
    cols = offsets[:, 1:] + np.arange(w)  # (n, w)
    if flip:
        flips = rng.random(n) < 0.5
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def color_jitter(
    images: np.ndarray, rng: np.random.Generator, brightness: float = 0.2,
    contrast: float = 0.2, saturation: float = 0.2
) -> np.ndarray:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue=0)``, per image.

    Each image draws its three factors uniform in [1 - x, 1 + x] and a random order of
    the three adjustments, as ``ColorJitter.get_params`` does (SPEC §1.3), then applies
    torchvision's tensor arithmetic on floats in [0, 1]: brightness scales; contrast
    blends with the mean of the image's grayscale; saturation blends with the grayscale
    image; each result is clamped to [0, 1]. (The reference jitters PIL images, which
    round to uint8 after each adjustment; this float version does not round.)

    Args:
        images: float32 (N, H, W, 3) in [0, 1].
        rng: numpy Generator (factors, then orders, are drawn from it).
        brightness, contrast, saturation: the jitter strengths. Defaults to 0.2 each.

    Returns:
        The jittered float32 images.
    """
    n = len(images)
    strengths = np.array([brightness, contrast, saturation], np.float64)
    factors = rng.uniform(1 - strengths, 1 + strengths, size=(n, 3)).astype(np.float32)
    orders = np.argsort(rng.random((n, 3)), axis=1)  # a uniform random permutation per image
    out = np.asarray(images, np.float32)
    weights = np.array([0.2989, 0.587, 0.114], np.float32)  # torchvision's rgb_to_grayscale
    for position in range(3):
        op = orders[:, position]
        f = factors[np.arange(n), op][:, None, None, None]
        gray = (out @ weights)[..., None]
        mean = gray.mean(axis=(1, 2, 3), keepdims=True)
        blended = np.where((op == 0)[:, None, None, None], out * f,
                           np.where((op == 1)[:, None, None, None], f * out + (1 - f) * mean,
                                    f * out + (1 - f) * gray))
        out = np.clip(blended, 0.0, 1.0)
    return out


def normalize(
    images: np.ndarray, mean: Sequence[float] | float = 0.0, std: Sequence[float] | float = 1.0
) -> np.ndarray:
    """float32 ``(images / 255 - mean) / std``, per channel on the last axis (SPEC §3.3)."""
    return _standardize(images.astype(np.float32) / np.float32(255), mean, std)


def _standardize(scaled: np.ndarray, mean, std) -> np.ndarray:
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class ImageBatches(keras.utils.PyDataset):
    """Shuffled, augmented, normalised float32 batches from uint8 images (SPEC §0.5).

    Epochs: the object counts completed passes in ``on_epoch_end`` (Keras calls it after
    each epoch; the calls it also makes around its first peek at the data, which serves
    only the first one or two batches, are not counted). ``start_epoch`` (or setting
    ``epoch``) resumes; :meth:`epoch_callback` ties ``epoch`` to ``fit``'s own epoch
    number, exact also for one- or two-batch data. Pass ``shuffle=False`` to ``fit``: the
    order is this object's (Keras would otherwise also permute the batch order).

    Args:
        x: images (N, H, W, C), or (N, H, W) for one channel.
        y: labels (N,) (or any per-sample targets).
        batch_size: images per batch. Defaults to 128.
        mean: per-channel mean subtracted after /255. Defaults to 0.
        std: per-channel std divided by after that. Defaults to 1.
        augment: random crop (``pad`` zero padding) then flip p=0.5, per image.
            Defaults to False.
        shuffle: new permutation each epoch from (seed, epoch). Defaults to False.
        seed: seed of the permutations and augmentations. Defaults to 0.
        drop_last: drop the last partial batch. Defaults to False (kept).
        start_epoch: epoch number of the first pass (resume). Defaults to 0.
        pad: crop padding. Defaults to 4.
        transform: optional ``f(batch, rng) -> batch`` applied after crop/flip to the
            float32 batch in [0, 1], before normalisation (e.g. colour jitter).
            Defaults to None.
        repeat: an endless stream of passes (batch i comes from pass i // len), for
            ``fit(steps_per_epoch=...)`` with epochs that do not divide a pass: Keras does
            not wrap a finite dataset inside an epoch. Each pass is shuffled and augmented
            from (seed, pass). A resumed ``fit`` (``initial_epoch`` k, with
            :meth:`epoch_callback`) continues the stream at batch k * steps_per_epoch.
            Defaults to False.
        flatten: give each image as one vector in channel-major (C, H, W) order, as
            torchvision's ``ToTensor`` then ``view(-1)`` (Marion's MLP inputs, SPEC §2.3).
            Defaults to False.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of PyDataset.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 128,
        *,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        augment: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        start_epoch: int = 0,
        pad: int = 4,
        transform: Transform | None = None,
        repeat: bool = False,
        flatten: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length. Received: {len(x)=}, {len(y)=}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive. Received: {batch_size=}")
        if np.ndim(x) not in (3, 4):
            raise ValueError(f"x must be (N, H, W[, C]). Received: {np.shape(x)=}")
        self.x, self.y = x, y
        self.batch_size, self.drop_last = batch_size, drop_last
        self.mean, self.std = mean, std
        self.augment, self.shuffle, self.seed, self.pad = augment, shuffle, seed, pad
        self.transform = transform
        self.repeat = repeat
        self.flatten = flatten
        self.epoch = start_epoch
        self._served: set[int] = set()
        self._stream_offset = 0  # repeat: stream batches that fit's indices start after
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The sample order of an epoch (identity without shuffle)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(len(self.y))
        if self._order_cache is None or self._order_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.y))
            self._order_cache = (epoch, perm)
        return self._order_cache[1]

    @property
    def num_batches(self) -> int | None:
        """Batches per pass; None (endless, for Keras) with ``repeat``."""
        return None if self.repeat else len(self)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch = self.epoch
        if self.repeat:
            index += self._stream_offset
            epoch, index = self.epoch + index // len(self), index % len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"batch index out of range 0..{len(self) - 1}. Received: {index=}")
        self._served.add(index)
        idx = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.x[idx]
        channel_last = images.ndim == 3
        if channel_last:
            images = images[..., None]
        rng = np.random.default_rng([self.seed, epoch, 1, index])
        if self.augment:
            images = random_crop_flip(images, rng, self.pad)
        scaled = images.astype(np.float32) / np.float32(255)
        if self.transform is not None:
            scaled = self.transform(scaled, rng)
        batch = _standardize(scaled, self.mean, self.std)
        if self.flatten:  # torchvision's ToTensor then view(-1): channels first
            return batch.transpose(0, 3, 1, 2).reshape(len(batch), -1), self.y[idx]
        return (batch[..., 0] if channel_last else batch), self.y[idx]

    def on_epoch_end(self) -> None:
        """Count a pass that served every batch; Keras' peeks serve one or two."""
        if len(self._served) >= len(self) and not self.repeat:
            self.epoch += 1
        self._served.clear()

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback tying the data to ``fit``'s epoch number, so a resumed ``fit`` sees
        the batches the uninterrupted one would have: it sets ``epoch`` at each epoch's
        start, or with ``repeat`` moves the stream to ``initial_epoch * steps``."""
        return _EpochSync(self)


class _EpochSync(keras.callbacks.Callback):
    """See :meth:`ImageBatches.epoch_callback`."""

    def __init__(self, batches: ImageBatches):
        super().__init__()
        self.batches = batches
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        batches = self.batches
        if not batches.repeat:
            batches.epoch = epoch
        elif self._first:  # Keras numbers a fit's stream from 0, resumed or not
            batches._stream_offset = epoch * int(self.params.get("steps") or 0)
        self._first = False
        batches._served.clear()


def split_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    mean: Sequence[float] | float = CIFAR10_MEAN,
    std: Sequence[float] | float = CIFAR10_STD,
    augment: bool = True,
    seed: int = 0,
    shuffle_eval: bool = False,
    repeat_train: bool = False,
    **kwargs,
) -> dict[str, ImageBatches]:
    """The recipe's pipelines: train shuffled (and augmented), val/test never augmented.

    Args:
        dataset: a loaded :class:`depthlab.data.Dataset`.
        batch_size: batch size of every split.
        mean: normalisation mean. Defaults to ``CIFAR10_MEAN``.
        std: normalisation std. Defaults to ``CIFAR10_STD``.
        augment: crop+flip on the training split. Defaults to True.
        seed: pipeline seed. Defaults to 0.
        shuffle_eval: shuffle val/test too (the coursework does; metrics are means).
            Defaults to False.
        repeat_train: the training batches as an endless stream (``ImageBatches(repeat=True)``)
            for ``fit(steps_per_epoch=...)``. Defaults to False.
        **kwargs: passed to every :class:`ImageBatches` (``drop_last``, ``workers``...).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` (no "val" when the data set has none).
    """
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    out = {}
    for part, split in splits.items():
        if split is None:
            continue
        train = part == "train"
        out[part] = ImageBatches(
            split.x,
            split.y,
            batch_size,
            mean=mean,
            std=std,
            augment=augment and train,
            shuffle=train or shuffle_eval,
            seed=seed,
            repeat=train and repeat_train,
            **kwargs,
        )
    return out
