"""Collators turning dataset items into the batches the model and trainer consume (``batch_type`` keys).

Detection batch (:class:`RefDetCollator`), from several episodes:
    ``batch_type``: ``"detection"``;
    ``query_images``: float32 (B, 3, H, W) in [0, 1], letterboxed to ``imgsz``;
    ``support_images``: float32 (N, K, 3, S, S): the union of the episodes' support sets; every one of the B
    queries is scored against all N targets. A target present in several episodes appears once;
    ``targets``: float32 (T, 6) rows ``[batch_idx, class_idx, x1, y1, x2, y2]``, class_idx in 0..N-1, boxes in
    model-input pixels: one row for every query whose object is among the N merged targets (so a query that
    was mismatched in its own episode becomes positive if another episode brought its target);
    ``query_boxes``: float32 (B, 4) the box of each query's object (zeros when none);
    ``support_labels``: int64 (N,); ``query_labels``: int64 (B,), -1 for background frames;
    ``is_background``: bool (B,), True for queries without a row in ``targets``.
Triplet batch (:class:`TripletCollator`), from triplet items (tiny episodes: a positive and a negative frame):
    the same keys with ``batch_type`` ``"triplet"``, plus ``triplets``: int64 (M, 3) rows
    ``[class_idx, positive_idx, negative_idx]``: the anchor target's index among the N supports and the
    query indices of its positive and negative frames.
Mixed batch (:class:`MixedCollator`): ``{"batch_type": "mixed", "detection": <detection batch>,
"triplet": <triplet batch>}``; both parts are always present.
"""

from __future__ import annotations

import torch


def merge_episodes(items: list[dict]) -> dict:
    """The detection-batch keys (all but ``batch_type``) of episode-like items (see the module docstring)."""
    class_of: dict[int, int] = {}
    supports = []
    for item in items:
        for label, images in zip(item["support_labels"].tolist(), item["support_images"], strict=True):
            if label not in class_of:
                class_of[label] = len(supports)
                supports.append(images)
    query_labels = torch.cat([item["query_labels"] for item in items])
    query_boxes = torch.cat([item["query_boxes"] for item in items]).float()
    rows = [
        torch.cat([torch.tensor([b, class_of[label]], dtype=torch.float32), query_boxes[b]])
        for b, label in enumerate(query_labels.tolist())
        if label in class_of
    ]
    is_background = torch.tensor([label not in class_of for label in query_labels.tolist()], dtype=torch.bool)
    return {
        "query_images": torch.cat([item["query_images"] for item in items]),
        "support_images": torch.stack(supports),
        "targets": torch.stack(rows) if rows else torch.zeros((0, 6), dtype=torch.float32),
        "query_boxes": query_boxes,
        "support_labels": torch.tensor(list(class_of), dtype=torch.int64),
        "query_labels": query_labels,
        "is_background": is_background,
    }


class RefDetCollator:
    """Merge episodes into one detection batch (see the module docstring)."""

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("RefDetCollator got an empty list of episodes")
        return {"batch_type": "detection", **merge_episodes(items)}


class TripletCollator:
    """Merge triplet items into one triplet batch (see the module docstring)."""

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("TripletCollator got an empty list of triplets")
        batch = {"batch_type": "triplet", **merge_episodes(items)}
        class_of = {label: i for i, label in enumerate(batch["support_labels"].tolist())}
        rows, offset = [], 0
        for item in items:
            rows.append([class_of[int(item["support_labels"][0])], offset, offset + 1])
            offset += len(item["query_images"])
        batch["triplets"] = torch.tensor(rows, dtype=torch.int64)
        return batch


class MixedCollator:
    """Split a list of detection and triplet items by their ``kind`` and collate each part."""

    def __init__(self):
        self.detection, self.triplet = RefDetCollator(), TripletCollator()

    def __call__(self, items: list[dict]) -> dict:
        unknown = {item.get("kind") for item in items} - {"detection", "triplet"}
        if unknown:
            raise ValueError(f"MixedCollator: unknown item kind(s) {sorted(map(str, unknown))}")
        detection = [item for item in items if item["kind"] == "detection"]
        triplet = [item for item in items if item["kind"] == "triplet"]
        if not detection or not triplet:
            raise ValueError(
                f"MixedCollator: a mixed batch needs both kinds, got {len(detection)} episode(s) and "
                f"{len(triplet)} triplet(s) (batch it with MixedBatchSampler)"
            )
        return {
            "batch_type": "mixed",
            "detection": self.detection(detection),
            "triplet": self.triplet(triplet),
        }
