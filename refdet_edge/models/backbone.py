"""Query backbone: the ultralytics YOLOv8 graph up to its neck outputs P3/P4/P5 (strides 8/16/32)."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

STRIDES = (8, 16, 32)


def yolo_graph(cfg: str = "yolov8n.yaml") -> DetectionModel:
    """The ultralytics ``DetectionModel`` of ``cfg`` (80 COCO classes), initialised as ultralytics does
    (including its Detect layer's bias prior); split into :class:`QueryBackbone` and the head's towers."""
    return DetectionModel(cfg, verbose=False)


class QueryBackbone(nn.Module):
    """YOLOv8 backbone + PAN neck of an ultralytics ``DetectionModel`` (every layer but its Detect layer).

    ``forward(images)`` returns the three neck outputs ``[P3, P4, P5]``. Layer ``i`` of the ultralytics graph
    is ``layers.i`` here, so an ultralytics state dict maps onto it by renaming ``model.`` to ``layers.``.
    """

    def __init__(self, graph: DetectionModel) -> None:
        super().__init__()
        self.layers = graph.model[:-1]
        self.save = set(graph.save)
        detect = graph.model[-1]
        self.out_indices = list(detect.f)
        self.channels = tuple(detect.cv2[i][0].conv.in_channels for i in range(len(self.out_indices)))
        self.strides = STRIDES

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        saved: dict[int, torch.Tensor] = {}
        x = images
        for layer in self.layers:
            if layer.f != -1:
                x = (
                    saved[layer.f]
                    if isinstance(layer.f, int)
                    else [x if j == -1 else saved[j] for j in layer.f]
                )
            x = layer(x)
            if layer.i in self.save:
                saved[layer.i] = x
        return [saved[i] for i in self.out_indices]
