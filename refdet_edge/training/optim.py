"""The optimizer's parameter groups: learning rate by module group, weight decay only on weight matrices.

As in ultralytics and timm, AdamW's decoupled weight decay applies to convolution and linear weights only:
norms, biases and every scalar or 1-D parameter (``logit_scale``, ``logit_bias``) are left undecayed, since
decay pulls them towards 0 (a norm's scale, a score's temperature), which is no regularisation. The split
is timm's :func:`~timm.optim.param_groups_weight_decay` (``ndim <= 1`` or a name ending in ``.bias``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from timm.optim import param_groups_weight_decay
from torch import nn


def param_groups(
    model: nn.Module,
    groups: Mapping[str, Sequence[nn.Parameter]],
    lrs: Mapping[str, float],
    weight_decay: float,
) -> list[dict]:
    """AdamW parameter groups: each of ``groups`` (name -> parameters, e.g. ``main`` and ``support`` from
    :meth:`~refdet_edge.training.stages.StageSpec.apply`) split into a decayed and an undecayed part.

    Each group dict holds ``params``, ``lr`` and ``base_lr`` (``lrs[name]``, the peak the schedule scales),
    ``weight_decay`` and ``name`` (``"main"``, ``"main_no_decay"``, ...). Empty parts are left out.

    Raises:
        ValueError: when a parameter of ``groups`` is not a trainable parameter of ``model``, or sits in
            two groups.
    """
    owner: dict[int, str] = {}
    for name, params in groups.items():
        for p in params:
            if id(p) in owner:
                raise ValueError(f"parameter group {name!r} repeats a parameter of group {owner[id(p)]!r}")
            owner[id(p)] = name
    split = param_groups_weight_decay(model, weight_decay)
    found = {id(p) for part in split for p in part["params"]}
    if set(owner) - found:
        raise ValueError("parameter groups hold a parameter that is not a trainable parameter of the model")
    out = []
    for name in groups:
        for part in split:
            params = [p for p in part["params"] if owner.get(id(p)) == name]
            if params:
                suffix = "" if part["weight_decay"] else "_no_decay"
                out.append(
                    {
                        "params": params,
                        "lr": lrs[name],
                        "base_lr": lrs[name],
                        "weight_decay": part["weight_decay"],
                        "name": name + suffix,
                    }
                )
    return out
