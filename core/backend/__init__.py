"""Backend selection and every per-backend setting depthlab needs (SPEC §0.1, §0.6).

Keras fixes its backend at the first ``import keras``, so :func:`select` must run before
anything imports Keras (or TensorFlow, which imports Keras). Every backend-specific branch
of depthlab lives in this package, one module per concern: this one (selection, numerics,
GPU settings, seeding, tags), :mod:`.grads` (gradient reductions of GradientCapture),
:mod:`.loops` (loops over stacked block weights) and :mod:`.memory` (release, peak,
out-of-memory). Layers and callbacks import no backend themselves.

Remat under XLA (:func:`select`, JAX): XLA's ``cse_barrier_expander`` pass removes the
optimisation barriers ``jax.checkpoint`` (hence ``keras.remat``) puts around the recompute,
after which XLA's CSE merges the recompute into the forward pass and keeps its results:
remat then saves nothing on XLA CPU (measured: per-block temp 67.9 vs 69.8 MiB, SPEC §1.5
benchmark). ``select("jax")`` disables that pass unless ``XLA_FLAGS`` already names its own
``--xla_disable_hlo_passes`` list; nets without remat compile exactly as before.

GPU settings (:func:`configure`): JAX does not preallocate 75 % of the device (so peaks
are real use and several processes can share a GPU), TensorFlow grows its memory likewise;
float32 matrix products and convolutions are exact float32, not TF32, unless
``DEPTHLAB_MATMUL_PRECISION=tf32`` trades that for speed (mixed-precision jobs use bf16
either way).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator

BACKENDS = ("jax", "tensorflow", "torch")
KEEP_REMAT_BARRIERS = "--xla_disable_hlo_passes=cse_barrier_expander"


class BackendError(ValueError):
    """The requested backend is unknown or can no longer be selected in this process."""


def select(name: str | None = None) -> str:
    """Select the Keras backend for this process and return its name.

    Args:
        name: one of ``BACKENDS``; ``None`` keeps ``KERAS_BACKEND`` (default ``jax``).

    Raises:
        BackendError: unknown name, or Keras already imported with another backend.
    """
    name = name or os.environ.get("KERAS_BACKEND", "jax")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _precision()  # a bad setting fails here, before anything loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # read when JAX starts
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise BackendError(
                f"Keras is already imported with backend {current!r}; start a new process "
                f"with --backend {name} (or KERAS_BACKEND={name})"
            )
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "--xla_disable_hlo_passes" not in flags:  # read when XLA starts (module docstring)
            os.environ["XLA_FLAGS"] = f"{flags} {KEEP_REMAT_BARRIERS}".strip()
    return name


def configure() -> None:
    """Per-backend numerics and GPU settings (module docstring); imports Keras.

    torch on CPU keeps subnormals by default (pytorch#19652) and slows by orders of
    magnitude on the ~1e-38 gradients of vanishing-gradient nets (SPEC §3.6): flush them to
    zero. XLA (JAX) and TensorFlow's CPU kernels already set FTZ/DAZ.
    """
    if "keras" not in sys.modules:
        with native_stderr_silenced():  # TensorFlow's start-up lines bypass its log level
            import keras
    import keras

    name = keras.backend.backend()
    exact = _precision() == "float32"
    if name == "torch":
        import torch

        torch.set_flush_denormal(True)
        torch.backends.cuda.matmul.allow_tf32 = not exact
        torch.backends.cudnn.allow_tf32 = not exact
    elif name == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision",
                          "highest" if exact else "tensorfloat32")
    else:
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            with contextlib.suppress(RuntimeError):  # already initialised: keep as is
                tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.experimental.enable_tensor_float_32_execution(not exact)


def _precision() -> str:
    value = os.environ.get("DEPTHLAB_MATMUL_PRECISION", "float32")
    if value not in ("float32", "tf32"):
        raise BackendError(f"DEPTHLAB_MATMUL_PRECISION={value!r}: choose float32 or tf32")
    return value


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for a while.

    TensorFlow writes "WARNING: All log messages before absl::InitializeLog()..." and a
    oneDNN notice when it loads, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; a command's error
    must stay one line. Keras loads TensorFlow whenever it is installed, on any backend,
    at its first ``model.save`` (it checks for ``tf.TensorShape``): wrap that too.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def set_seed(seed: int) -> None:
    """``keras.utils.set_random_seed`` without importing TensorFlow on the other backends.

    Keras seeds TensorFlow whenever it is installed, for tf.data pipelines depthlab does not
    use; on jax/torch that import costs seconds per process and writes TensorFlow's start-up
    lines to stderr, where a command's one-line error must stand alone.
    """
    import random

    import keras
    import numpy as np

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def flush_denormal_enabled() -> bool | None:
    """Whether torch currently flushes subnormals (None on other backends)."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    import torch

    return bool(torch.tensor(1e-40, dtype=torch.float32).item() == 0.0)


def device() -> str:
    """A short description of the device the backend computes on."""
    import keras

    name = keras.backend.backend()
    if name == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"
    if name == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
        return "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"gpu:{gpus[0].name}" if gpus else "cpu"


def describe() -> dict[str, str]:
    """Tags describing the numerical environment of a run (backend, versions, device)."""
    import keras

    name = keras.backend.backend()
    module = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[name]
    framework = __import__(module)
    return {
        "backend": name,
        "keras_version": keras.__version__,
        "framework_version": f"{module} {framework.__version__}",
        "device": device(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
    }
