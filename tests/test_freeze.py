"""TrainConfig.freeze: parameter-name prefixes that stay as loaded in every stage."""

from __future__ import annotations

import pytest

from refdet_edge.models import ModelConfig, create_model
from refdet_edge.training.config import ConfigError, TrainConfig
from refdet_edge.training.stages import stage_spec


@pytest.fixture(scope="module")
def model():
    return create_model(ModelConfig(imgsz=64, support_size=64))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_frozen_prefixes_never_train_and_the_rest_of_the_stage_does(model, stage):
    freeze = ("backbone", "head.cv2", "head.cv3")
    groups = stage_spec(stage).apply(model, freeze)
    trained = {id(p) for group in groups.values() for p in group}
    for name, p in model.named_parameters():
        if name.startswith(freeze):
            assert id(p) not in trained and not p.requires_grad, name
    assert any(n.startswith("head.identity") and id(p) in trained for n, p in model.named_parameters())
    assert any(n.startswith("fusion") and id(p) in trained for n, p in model.named_parameters())
    unfrozen = stage_spec(stage).apply(model)
    assert any(n.startswith("backbone") for n, p in model.named_parameters() if p.requires_grad)
    assert sum(len(g) for g in unfrozen.values()) > len(trained)


def test_freeze_must_be_a_list_of_prefixes():
    assert TrainConfig(freeze=["backbone"]).freeze == ["backbone"]
    with pytest.raises(ConfigError, match="freeze"):
        TrainConfig(freeze="backbone")
