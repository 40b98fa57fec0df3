"""Device memory around jobs: release between jobs, peak per job, out-of-memory errors.

A table runs many jobs in one process; on a GPU each job's models, compiled steps and
optimizer state must be gone before the next starts (``release``), and an out-of-memory
error must be reported as such, with how much was in use, rather than as a backend
traceback. Peaks come from the backend's allocator where it exposes one (CUDA under torch,
XLA's device statistics under JAX, TensorFlow's ``get_memory_info``); on CPU there is none,
but under JAX XLA still says what a compiled training step needs (:func:`compiled_step_bytes`),
exactly and without running it, e.g. for a 10,022-layer net no machine here could hold.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

import keras


def release() -> None:
    """Drop Keras' global state (names, policies, compiled functions); on a GPU also
    collect the last job's objects now and free the allocator's cached blocks (torch) and
    compiled executables (JAX). On CPU a full ``gc.collect`` costs ~0.2 s per job here, for
    host memory Python's own collector frees soon enough: it is skipped."""
    keras.backend.clear_session(free_memory=False)
    if not _gpu():
        return
    gc.collect()
    name = keras.backend.backend()
    if name == "torch":
        import torch

        torch.cuda.empty_cache()
    elif name == "jax":
        import jax

        jax.clear_caches()


def _gpu() -> bool:
    name = keras.backend.backend()
    if name == "torch":
        import torch

        return torch.cuda.is_available()
    if name == "jax":
        import jax

        return jax.default_backend() == "gpu"
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def reset_peak() -> None:
    """Start a new peak measurement (where the backend allows resetting it)."""
    if not _gpu():
        return
    name = keras.backend.backend()
    if name == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_bytes() -> int | None:
    """Peak device memory in use since :func:`reset_peak` (JAX: since the process began);
    None where the backend exposes none (CPU)."""
    if not _gpu():
        return None
    name = keras.backend.backend()
    if name == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if name == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None
    import tensorflow as tf

    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def total_bytes() -> int | None:
    """The device's memory, where known."""
    if not _gpu():
        return None
    name = keras.backend.backend()
    if name == "torch":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    if name == "jax":
        import jax

        return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is the backend's out-of-memory error (device or host)."""
    while error is not None:
        if isinstance(error, MemoryError):
            return True
        kind, text = type(error).__name__, str(error)
        if kind in ("OutOfMemoryError", "ResourceExhaustedError") or (
            "RESOURCE_EXHAUSTED" in text or "CUDA out of memory" in text
            or "out of memory" in text.lower() and "cuda" in text.lower()
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def describe_out_of_memory(error: BaseException) -> str:
    """One line: out of memory, with the peak and the device's size where known."""
    peak, total = peak_bytes(), total_bytes()
    where = ""
    if peak is not None:
        where = f" (peak {peak / 2**30:.2f} GiB in use" + (
            f" of {total / 2**30:.1f} GiB)" if total else ")")
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"out of memory{where}: {type(error).__name__}: {first}"


def jax_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                   loss: Callable) -> Callable:
    """The stateless step ``(trainable, non_trainable, optimizer_vars, x, y) -> (loss,
    trainable, non_trainable, optimizer_vars)`` that ``model.fit`` compiles under JAX,
    written out so that it can be lowered on abstract inputs (or jitted and timed)."""
    import jax

    def step(trainable, non_trainable, opt_vars, x, y):
        def loss_of(trainable):
            out, new_non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                          training=True)
            return loss(y, out), new_non_trainable

        (value, new_non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        new_trainable, new_opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return value, new_trainable, new_non_trainable, new_opt_vars

    return step


def compiled_step_bytes(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                        loss: Callable, x_shape: Sequence[int],
                        y_shape: Sequence[int]) -> dict[str, int]:
    """XLA's memory analysis of one compiled (never run) training step, JAX backend only:
    ``temp`` (activations kept for the backward, workspace), ``argument`` and ``output``
    (weights, optimizer states, batch), ``alias``. The optimizer must be built."""
    if keras.backend.backend() != "jax":
        raise ValueError("compiled_step_bytes needs the jax backend (XLA's memory analysis)")
    import jax

    def abstract(variables) -> list:
        return [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for v in variables]

    args = (abstract(model.trainable_variables), abstract(model.non_trainable_variables),
            abstract(optimizer.variables), jax.ShapeDtypeStruct(tuple(x_shape), "float32"),
            jax.ShapeDtypeStruct(tuple(y_shape), "int32"))
    stats = jax.jit(jax_train_step(model, optimizer, loss)).lower(*args).compile() \
        .memory_analysis()
    return {"temp": int(stats.temp_size_in_bytes), "argument": int(stats.argument_size_in_bytes),
            "output": int(stats.output_size_in_bytes), "alias": int(stats.alias_size_in_bytes)}
