"""Reading what training code saves: the layouts accepted, and one clear line for the rest."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.errors import WeightsError
from edgekit.zoo.checkpoints import classifier_classes, load_into, read_checkpoint


def small_net(classes: int = 7) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, classes))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "optimizer": {"lr": 0.1}},
        lambda s: {"model_state_dict": {f"_orig_mod.{k}": v for k, v in s.items()}},
        lambda s: {"ema": {"module": {f"module._orig_mod.{k}": v for k, v in s.items()}}},
        lambda s: collections.OrderedDict(s),
    ],
    ids=["bare", "state_dict", "ddp-model", "compile", "ema-nested", "ordered"],
)
def test_common_layouts_load_strictly(tmp_path: Path, wrap) -> None:
    trained = small_net()
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(trained.state_dict()), path)
    state = read_checkpoint(path)
    assert classifier_classes(state) == 7
    fresh = small_net()
    load_into(fresh, state, path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))


class Pickled:  # a training script's own class: weights_only must refuse to rebuild it
    def __init__(self) -> None:
        self.weights = small_net().state_dict()


def test_pickled_objects_are_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(Pickled(), path)
    with pytest.raises(WeightsError, match=r"pickled Python objects .*Pickled") as err:
        read_checkpoint(path)
    assert "state_dict()" in err.value.hint


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="is not a PyTorch checkpoint"):
        read_checkpoint(path)


def test_a_dict_without_tensors_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "best": 0.9}, path)
    with pytest.raises(WeightsError, match=r"holds no state dict \(found: epoch, best\)"):
        read_checkpoint(path)


def test_shape_mismatch_names_the_first_layer_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(small_net(7).state_dict(), path)
    with pytest.raises(WeightsError, match=r"3\.weight is \[7, 7200\] in the checkpoint but \[5, 7200\]"):
        load_into(small_net(5), read_checkpoint(path), path)


def test_missing_tensors_are_counted(tmp_path: Path) -> None:
    state = small_net().state_dict()
    del state["1.running_mean"]
    with pytest.raises(WeightsError, match=r"1 tensors missing \(first: 1\.running_mean\)"):
        load_into(small_net(), state, "ckpt.pt")
