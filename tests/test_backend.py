"""Per-backend numerics set by depthlab.backend (SPEC §0.1, §3.6, §3.7 item 11)."""

import pytest
from conftest import BACKEND

from depthlab import backend


def test_flush_to_zero_is_on_for_torch_before_training():
    """torch CPU keeps subnormals unless told (pytorch#19652); XLA and TF flush them."""
    expected = True if BACKEND == "torch" else None
    assert backend.flush_denormal_enabled() is expected


def test_describe_names_backend_versions_and_device():
    tags = backend.describe()
    assert tags["backend"] == BACKEND
    assert tags["keras_version"] == "3.15.1"
    assert tags["framework_version"].split()[0] == BACKEND
    assert tags["device"]


def test_selecting_another_backend_after_import_fails_clearly():
    other = next(b for b in backend.BACKENDS if b != BACKEND)
    with pytest.raises(backend.BackendError, match="already imported"):
        backend.select(other)
    assert backend.select(BACKEND) == BACKEND
