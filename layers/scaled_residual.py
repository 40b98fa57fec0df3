"""Marion et al.'s scaled residual stacks, one stacked weight per map (SPEC §2.2).

Reference: PierreMarion23/scaling-resnets @dev (0972d20), models.py (``FullResNet`` = res-3,
``SimpleResNet`` = res-1) and utils.py (initialisations). Weights are drawn with numpy
(:mod:`depthlab.layers.fractional`), so a seed gives the same network on every backend.
Row-vector convention: a batch h of shape (B, d) maps as h @ W_k^T, W_k[i, j] as in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from depthlab.backend.loops import compiled, scan, scan_blocks
from depthlab.layers.fractional import fgn, gp_smooth

KINDS = ("res3", "res1")
INITS = ("iid", "smooth", "fbm")
LENGTH_SCALE = 0.1  # RBF length scale of the dev branch's ``smooth`` init (SPEC §2.2)


def sample_blocks(
    scheme: str,
    shape: Sequence[int],
    hurst: float | None = None,
    length_scale: float = LENGTH_SCALE,
    rng: np.random.Generator | int | Sequence[int] | None = None,
) -> np.ndarray:
    """Unit-variance draws, correlated along axis 0 (the block index k) per scheme (SPEC §2.2).

    Args:
        scheme: "iid" (independent N(0, 1)); "smooth" (per entry a GP over t_k = k/L with
            RBF covariance); "fbm" (per entry an exact fGn series G_0..G_{L-1} of index
            ``hurst``). Entries other than along axis 0 are independent.
        shape: (L, ...) output shape.
        hurst: Hurst index for "fbm".
        length_scale: GP length scale for "smooth". Defaults to 0.1.
        rng: a numpy Generator or seed. Defaults to None.

    Returns:
        float64 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(rng)
    if scheme == "iid":
        return rng.standard_normal(shape)
    depth, count = shape[0], math.prod(shape[1:])
    if scheme == "smooth":
        series = gp_smooth(depth, length_scale, size=count, rng=rng)
    elif scheme == "fbm":
        if hurst is None:
            raise ValueError("scheme 'fbm' needs a Hurst index. Received: hurst=None")
        series = fgn(depth, hurst, size=count, rng=rng)
    else:
        raise ValueError(f"scheme must be one of {INITS}. Received: scheme={scheme!r}")
    return series.T.reshape(shape)


@keras.saving.register_keras_serializable(package="depthlab")
class BlockInitializer(keras.initializers.Initializer):
    """``scale`` x :func:`sample_blocks` (numpy, seeded: identical on every backend).

    Args:
        scheme: "iid", "smooth" or "fbm". Defaults to "iid".
        scale: multiplier, e.g. 1/sqrt(d) (SPEC §2.2). Defaults to 1.0.
        hurst: Hurst index for "fbm". Defaults to None.
        length_scale: GP length scale for "smooth". Defaults to 0.1.
        seed: numpy seed (int or list of ints); the same seed gives the same values on
            every call. None draws fresh values. Defaults to None.
    """

    def __init__(
        self,
        scheme: str = "iid",
        scale: float = 1.0,
        hurst: float | None = None,
        length_scale: float = LENGTH_SCALE,
        seed: int | Sequence[int] | None = None,
    ):
        if scheme not in INITS:
            raise ValueError(f"scheme must be one of {INITS}. Received: scheme={scheme!r}")
        self.scheme = scheme
        self.scale = float(scale)
        self.hurst = None if hurst is None else float(hurst)
        self.length_scale = float(length_scale)
        self.seed = list(seed) if isinstance(seed, list | tuple) else seed

    def __call__(self, shape, dtype=None):
        values = sample_blocks(self.scheme, shape, self.hurst, self.length_scale, self.seed)
        return ops.convert_to_tensor(values * self.scale, dtype=dtype or "float32")

    def get_config(self):
        return {
            "scheme": self.scheme,
            "scale": self.scale,
            "hurst": self.hurst,
            "length_scale": self.length_scale,
            "seed": self.seed,
        }


def _sub_seed(seed: int | None, stream: int) -> list[int] | None:
    """Independent numpy streams per weight: W 0, V 1, A 2, F 3."""
    return None if seed is None else [int(seed), stream]


@keras.saving.register_keras_serializable(package="depthlab")
class ScaledResidualStack(keras.layers.Layer):
    """L residual blocks scaled by alpha_L = L^(-beta), run as one scan (``scan_blocks``).

    res-3: h <- h + alpha_L V_k act(W_k h) (with biases: V_k act(W_k h + c_k) + b_k);
    res-1: h <- h + alpha_L (V_k act(h) + b_k) (SPEC §2.1-2.2). W, V of shape (L, d, d) and
    biases of shape (L, d) are single variables; per-block gradients are their slices.

    Args:
        depth: number of blocks L.
        width: d (input and output width).
        beta: scaling exponent, alpha_L = L^(-beta).
        kind: "res3" or "res1". Defaults to "res3".
        init: "iid" (N(0, 1/d)), "smooth" (GP / sqrt(d)) or "fbm" (fGn / sqrt(d)).
            Defaults to "iid".
        hurst: Hurst index for ``init="fbm"``. Defaults to None.
        use_bias: zero-initialised trainable biases (both maps for res-3). Defaults to None:
            True only for fbm (SPEC §2.2).
        activation: name of the activation sigma. Defaults to "relu".
        length_scale: GP length scale for ``init="smooth"``. Defaults to 0.1.
        seed: numpy seed; W and V are independent streams of it. None: unseeded.
        **kwargs: base ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        beta: float,
        kind: str = "res3",
        init: str = "iid",
        hurst: float | None = None,
        use_bias: bool | None = None,
        activation: str = "relu",
        length_scale: float = LENGTH_SCALE,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(depth) < 1 or int(width) < 1:
            raise ValueError(
                f"depth and width must be positive. Received: depth={depth}, width={width}"
            )
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}. Received: kind={kind!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}. Received: init={init!r}")
        if init == "fbm" and hurst is None:
            raise ValueError("init='fbm' needs a Hurst index. Received: hurst=None")
        # === Config ===
        self.depth = int(depth)
        self.width = int(width)
        self.beta = float(beta)
        self.kind = kind
        self.init = init
        self.hurst = None if hurst is None else float(hurst)
        self.use_bias = init == "fbm" if use_bias is None else bool(use_bias)
        self.activation = activation
        self.length_scale = float(length_scale)
        self.seed = seed
        self._act = keras.activations.get(activation)

    @property
    def alpha(self) -> float:
        """The block scale alpha_L = L^(-beta)."""
        return float(self.depth) ** (-self.beta)

    def _matrix(self, name: str, stream: int):
        init = BlockInitializer(
            self.init,
            1.0 / math.sqrt(self.width),
            self.hurst,
            self.length_scale,
            _sub_seed(self.seed, stream),
        )
        shape = (self.depth, self.width, self.width)
        return self.add_weight(name=name, shape=shape, initializer=init)

    def _bias(self, name: str):
        return self.add_weight(name=name, shape=(self.depth, self.width), initializer="zeros")

    def build(self, input_shape):
        if input_shape[-1] != self.width:
            raise ValueError(
                f"ScaledResidualStack(width={self.width}) needs {self.width} input features. "
                f"Received: input_shape={input_shape}"
            )
        self.W = self._matrix("W", 0) if self.kind == "res3" else None
        self.V = self._matrix("V", 1)
        self.c = self._bias("c") if self.use_bias and self.kind == "res3" else None
        self.b = self._bias("b") if self.use_bias else None

    def call(self, inputs):
        alpha = ops.cast(self.alpha, inputs.dtype)
        names = [n for n in ("W", "c", "V", "b") if getattr(self, n) is not None]
        stacked = tuple(ops.convert_to_tensor(getattr(self, n)) for n in names)
        act = self._act

        def block(h, sliced):
            w = dict(zip(names, sliced, strict=True))
            u = h
            if "W" in w:  # res-3: V act(W h + c) + b; res-1: V act(h) + b
                u = ops.matmul(h, ops.transpose(w["W"]))
                u = u + w["c"] if "c" in w else u
            u = ops.matmul(act(u), ops.transpose(w["V"]))
            u = u + w["b"] if "b" in w else u
            return h + alpha * u

        return scan_blocks(block, inputs, stacked)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            "depth": self.depth,
            "width": self.width,
            "beta": self.beta,
            "kind": self.kind,
            "init": self.init,
            "hurst": self.hurst,
            "use_bias": self.use_bias,
            "activation": self.activation,
            "length_scale": self.length_scale,
            "seed": self.seed,
        }
        return {**base_config, **config}


def resnet_param_count(
    kind: str,
    depth: int,
    width: int,
    num_inputs: int,
    num_outputs: int,
    use_bias: bool = False,
) -> int:
    """d n_in + (2 d^2 | d^2) L (+ biases: 2 d L | d L) + d n_out (SPEC §2.2)."""
    maps = 2 if kind == "res3" else 1
    per_block = maps * width * width + (maps * width if use_bias else 0)
    return width * num_inputs + depth * per_block + width * num_outputs


def build_resnet(
    kind: str,
    depth: int,
    width: int,
    beta: float,
    init: str = "iid",
    num_inputs: int = 64,
    num_outputs: int = 1,
    hurst: float | None = None,
    use_bias: bool | None = None,
    activation: str = "relu",
    seed: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """x -> A x -> L scaled blocks -> F h_L (SPEC §2.2), no biases outside the stack.

    A (d x n_in) ~ N(0, 1/n_in) and F (n_out x d) ~ N(0, 1/d), i.i.d. whatever the block
    init, drawn with numpy from ``seed`` (streams 2 and 3; W and V use 0 and 1).

    Args:
        kind: "res3" (Figs 1-7) or "res1" (Figs 8-9).
        depth: number of blocks L.
        width: d.
        beta: scaling exponent.
        init: block init, "iid", "smooth" or "fbm". Defaults to "iid".
        num_inputs: n_in (64 synthetic, 784 MNIST, 3072 CIFAR-10). Defaults to 64.
        num_outputs: n_out (1 synthetic, 10 classes). Defaults to 1.
        hurst: Hurst index for fbm. Defaults to None.
        use_bias: block biases; None: True only for fbm. Defaults to None.
        activation: block activation. Defaults to "relu".
        seed: numpy seed. None: unseeded.
        name: model name. Defaults to "<kind>_L<depth>_d<width>".

    Returns:
        A ``keras.Model`` with layers "A", "blocks" and "F".
    """
    inputs = keras.Input(shape=(num_inputs,), name="x")
    a_init = BlockInitializer("iid", 1.0 / math.sqrt(num_inputs), seed=_sub_seed(seed, 2))
    f_init = BlockInitializer("iid", 1.0 / math.sqrt(width), seed=_sub_seed(seed, 3))
    h = layers.Dense(width, use_bias=False, kernel_initializer=a_init, name="A")(inputs)
    h = ScaledResidualStack(
        depth,
        width,
        beta,
        kind=kind,
        init=init,
        hurst=hurst,
        use_bias=use_bias,
        activation=activation,
        seed=seed,
        name="blocks",
    )(h)
    outputs = layers.Dense(num_outputs, use_bias=False, kernel_initializer=f_init, name="F")(h)
    return keras.Model(inputs, outputs, name=name or f"{kind}_L{depth}_d{width}")


# --- init-time propagation (Figs 1-7) ----------------------------------------------------


def _changes(w, v, h0, g, alpha, linear=False):
    """Forward and backward through res-3 blocks (ReLU, or the identity with ``linear``)
    for many networks and columns."""
    ws, vs = ops.moveaxis(w, 1, 0), ops.moveaxis(v, 1, 0)  # (L, N, d, d): scan over k
    a = alpha[:, None, :]

    def forward(h, weights):
        w_k, v_k = weights
        z = ops.matmul(w_k, h)
        # kept as float: TensorFlow's scan stacks outputs of the carry's dtype
        on = ops.ones_like(z) > 0 if linear else z > 0
        return h + a * ops.matmul(v_k, ops.where(on, z, 0.0)), ops.cast(on, h.dtype)

    def backward(grad, weights):
        w_k, v_k, on = weights
        inner = ops.where(on > 0, ops.matmul(ops.transpose(v_k, (0, 2, 1)), grad), 0.0)
        return grad + a * ops.matmul(ops.transpose(w_k, (0, 2, 1)), inner), None

    h_last, masks = scan(forward, h0, (ws, vs))
    g_last = ops.broadcast_to(g[:, :, None], ops.shape(h0))
    g_first, _ = scan(backward, g_last, (ws, vs, masks), reverse=True)

    def norm(t):
        return ops.sqrt(ops.sum(ops.square(t), axis=1))

    h_norm, g_norm = norm(h0), norm(g_last)
    return (norm(h_last - h0) / h_norm, norm(g_first - g_last) / g_norm,
            norm(h_last) / h_norm, norm(g_first) / g_norm)


_COMPILED: dict[str, object] = {}


def propagate(w: np.ndarray, v: np.ndarray, h0: np.ndarray, g: np.ndarray,
              alpha: np.ndarray, activation: str = "relu") -> dict[str, np.ndarray]:
    """Output and gradient change at initialisation of res-3 nets, many columns at once
    (SPEC §2.1 metrics, §2.5 vectorisation), on the Keras backend in float32.

    Forward h_{k+1} = h_k + alpha V_k relu(W_k h_k) keeps the ReLU masks; backward from the
    output gradient g (dl/dh_L is proportional to F^T: y is irrelevant) runs
    g_k = g_{k+1} + alpha W_k^T (m_k * (V_k^T g_{k+1})). Each column has its own alpha, so
    one network's every beta and input is one state (Fig 7: 70 x 10 columns). Values that
    overflow float32 come back as inf or NaN: "exploded".

    Args:
        w, v: block weights (N, L, d, d), W_k[i, j] as in torch (N networks).
        h0: initial states A x as columns (N, d, C).
        g: output gradient direction per network, F^T (N, d).
        alpha: the scale of each column (N, C), L^-beta.
        activation: "relu" (the paper) or "linear" (the closed form's other case).
            Defaults to "relu".

    Returns:
        ``out_diff`` = ||h_L - h_0|| / ||h_0||, ``grad_diff`` = ||g_0 - g_L|| / ||g_L||,
        ``out_ratio`` = ||h_L|| / ||h_0||, ``grad_ratio`` = ||g_0|| / ||g_L||: numpy (N, C).
    """
    if activation not in ("relu", "linear"):
        raise ValueError(f"activation must be 'relu' or 'linear'. Received: {activation=}")
    key = f"{keras.backend.backend()}-{activation}"
    if key not in _COMPILED:
        linear = activation == "linear"
        _COMPILED[key] = compiled(lambda *t: _changes(*t, linear=linear))
    fn = _COMPILED[key]
    tensors = [ops.convert_to_tensor(np.asarray(t, np.float32)) for t in (w, v, h0, g, alpha)]
    names = ("out_diff", "grad_diff", "out_ratio", "grad_ratio")
    return {n: ops.convert_to_numpy(t).astype(np.float64)
            for n, t in zip(names, fn(*tensors), strict=True)}


# --- many res-1 networks trained at once (Fig 9 cells) -------------------------------------


def cell_weights(cell: dict, depth: int, width: int, num_inputs: int,
                 num_outputs: int) -> dict[str, np.ndarray]:
    """The initial weights :func:`build_resnet` gives a res-1 net with this cell's ``beta``,
    ``init``, ``hurst`` and ``seed`` (the same numpy streams), as plain arrays."""
    seed, init = cell["seed"], cell.get("init", "fbm")
    hurst = cell.get("hurst") if init == "fbm" else None
    draws = {
        "A": BlockInitializer("iid", 1.0 / math.sqrt(num_inputs), seed=_sub_seed(seed, 2))(
            (num_inputs, width)),
        "V": BlockInitializer(init, 1.0 / math.sqrt(width), hurst, seed=_sub_seed(seed, 1))(
            (depth, width, width)),
        "F": BlockInitializer("iid", 1.0 / math.sqrt(width), seed=_sub_seed(seed, 3))(
            (width, num_outputs)),
    }
    out = {k: np.asarray(ops.convert_to_numpy(v), np.float32) for k, v in draws.items()}
    out["b"] = np.zeros((depth, width), np.float32)
    return out


@keras.saving.register_keras_serializable(package="depthlab")
class ResidualCells(keras.layers.Layer):
    """K independent res-1 networks (x -> A x -> L blocks scaled by L^-beta_k -> F h_L) in
    one layer: every weight has a leading cell axis, and no operation mixes cells, so one
    ``fit`` trains all of them exactly as K separate fits would with an elementwise
    optimizer (Adam) and the sum of the cells' losses (:func:`cells_loss`).

    Output: logits (batch, K, num_outputs). A cell whose logits stop being finite is
    marked dead in ``alive`` (non-trainable) and outputs zeros from then on: its loss is a
    constant, its gradient zero (see :class:`depthlab.optimizers.FiniteUpdates` for the
    step where it dies), so it cannot poison the others.

    Args:
        cells: per cell a dict with ``beta``, ``seed`` and the block ``init`` ("fbm" with
            ``hurst``, "iid" or "smooth").
        depth, width, num_inputs, num_outputs: L, d, n_in, n_out.
        use_bias: block biases b_k (zero-initialised; SPEC §2.2: with fBm). Defaults to True.
    """

    def __init__(self, cells: list[dict], depth: int, width: int, num_inputs: int,
                 num_outputs: int, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not cells:
            raise ValueError("ResidualCells needs at least one cell. Received: cells=[]")
        self.cells = [dict(c) for c in cells]
        self.depth, self.width = int(depth), int(width)
        self.num_inputs, self.num_outputs = int(num_inputs), int(num_outputs)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        weights = [cell_weights(c, self.depth, self.width, self.num_inputs, self.num_outputs)
                   for c in self.cells]
        names = ("A", "V", "b", "F") if self.use_bias else ("A", "V", "F")
        for name in names:
            stacked = np.stack([w[name] for w in weights])
            setattr(self, name, self.add_weight(
                name=name, shape=stacked.shape,
                initializer=keras.initializers.Constant(stacked)))
        if not self.use_bias:
            self.b = None
        alphas = np.array([self.depth ** -float(c["beta"]) for c in self.cells], np.float32)
        self.alpha = self.add_weight(name="alpha", shape=alphas.shape, trainable=False,
                                     initializer=keras.initializers.Constant(alphas))
        self.alive = self.add_weight(name="alive", shape=(len(self.cells),), trainable=False,
                                     initializer="ones")

    def call(self, inputs, training=False):
        h = ops.einsum("bi,kid->kbd", inputs, self.A)  # (K, B, d)
        a = self.alpha[:, None, None]
        stacked = (ops.moveaxis(self.V, 1, 0),) + (
            (ops.moveaxis(self.b, 1, 0),) if self.b is not None else ())

        def block(h, sliced):
            u = ops.einsum("kbj,kij->kbi", ops.relu(h), sliced[0])
            if len(sliced) > 1:
                u = u + sliced[1][:, None, :]
            return h + a * u

        h = scan_blocks(block, h, stacked)
        logits = ops.einsum("kbd,kdo->bko", h, self.F)
        finite = ops.all(ops.isfinite(logits), axis=(0, 2))
        alive = self.alive * ops.cast(finite, self.alive.dtype)
        if training:
            self.alive.assign(alive)
        return ops.where(alive[None, :, None] > 0, logits, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.cells), self.num_outputs)

    def get_config(self):
        return {**super().get_config(), "cells": self.cells, "depth": self.depth,
                "width": self.width, "num_inputs": self.num_inputs,
                "num_outputs": self.num_outputs, "use_bias": self.use_bias}


def cells_loss(y_true, y_pred):
    """The sum over cells of each cell's mean cross-entropy (per sample: the sum over
    cells), so each cell's gradient is that of its own loss."""
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    cells = ops.shape(y_pred)[1]
    logits = ops.reshape(y_pred, (-1, ops.shape(y_pred)[-1]))
    repeated = ops.reshape(ops.repeat(labels[:, None], cells, axis=1), (-1,))
    each = keras.losses.sparse_categorical_crossentropy(repeated, logits, from_logits=True)
    return ops.sum(ops.reshape(each, (-1, cells)), axis=1)
