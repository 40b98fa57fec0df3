"""--set overrides are parsed against the config's field types; bad ones fail clearly."""

import dataclasses
from typing import Literal

import pytest

from depthlab.config import ConfigError, apply_overrides, parse_overrides


@dataclasses.dataclass(frozen=True)
class Example:
    lr: float = 1e-3
    epochs: int = 100
    norm: bool = False
    dataset: Literal["cifar100", "cifar10"] = "cifar100"
    depths: tuple[int, ...] = (2, 2, 2, 2)
    hurst: float | None = None
    name: str = "x"


def test_overrides_parse_by_field_type():
    config = apply_overrides(Example(), parse_overrides(
        ["lr=1e-2", "epochs=3", "norm=true", "dataset=cifar10", "depths=(3,3,9,3)",
         "hurst=0.8", "name=abc"]))
    assert config == Example(1e-2, 3, True, "cifar10", (3, 3, 9, 3), 0.8, "abc")
    assert apply_overrides(Example(), {"epochs": "1e3", "hurst": "none"}).epochs == 1000
    assert apply_overrides(Example(hurst=0.5), {"hurst": "None"}).hurst is None


@pytest.mark.parametrize("override, message", [
    ({"nope": "1"}, "unknown config field 'nope'"),
    ({"epochs": "1.5"}, "expected an integer"),
    ({"lr": "fast"}, "expected float"),
    ({"norm": "maybe"}, "expected true or false"),
    ({"dataset": "imagenet"}, "expected one of cifar100, cifar10"),
])
def test_bad_overrides_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Example(), override)


def test_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
