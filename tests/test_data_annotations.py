"""annotations.json / prediction-file reading, validation and writing."""

from __future__ import annotations

import json

import pytest

from refdet_edge.data.annotations import (
    DatasetError,
    boxes_to_intervals,
    intervals_to_boxes,
    load_annotations,
    load_detections,
    save_annotations,
)

GOOD = [
    {
        "video_id": "Backpack_0",
        "annotations": [
            {"bboxes": [{"frame": 3, "x1": 321, "y1": 0, "x2": 381, "y2": 12}]},
            {"bboxes": [{"frame": 10, "x1": 1.5, "y1": 2, "x2": 3, "y2": 4.25}]},
        ],
    },
    {"video_id": "Jacket_1", "annotations": []},
]


def write(tmp_path, data, name="annotations.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_good_file(tmp_path):
    boxes = load_annotations(write(tmp_path, GOOD))
    assert boxes == {"Backpack_0": {3: (321.0, 0.0, 381.0, 12.0), 10: (1.5, 2.0, 3.0, 4.25)}, "Jacket_1": {}}


def test_round_trip_with_detections_key(tmp_path):
    boxes = {"a": {5: (1.0, 2.0, 3.0, 4.0), 6: (1.0, 2.0, 3.5, 4.0), 9: (0.0, 0.0, 1.0, 1.0)}, "b": {}}
    path = save_annotations(tmp_path / "pred.json", boxes, key="detections")
    data = json.loads(path.read_text())
    assert [len(e["detections"]) for e in data] == [2, 0]
    assert data[0]["detections"][0]["bboxes"][0] == {"frame": 5, "x1": 1, "y1": 2, "x2": 3, "y2": 4}
    assert load_annotations(path, key="detections") == boxes
    with pytest.raises(DatasetError, match="field 'annotations'"):
        load_annotations(path)


def test_intervals_split_at_gaps():
    boxes = {1: (0, 0, 1, 1), 2: (0, 0, 2, 2), 4: (0, 0, 3, 3)}
    intervals = boxes_to_intervals(boxes)
    assert [[f for f, _ in iv] for iv in intervals] == [[1, 2], [4]]
    assert intervals_to_boxes(intervals) == boxes


def bad(**override):
    box = {"frame": 3, "x1": 10, "y1": 10, "x2": 20, "y2": 20}
    box.update(override)
    return [{"video_id": "v0", "annotations": [{"bboxes": [box]}]}]


@pytest.mark.parametrize(
    "data, pattern",
    [
        ("{not json", "not valid JSON"),
        ({"video_id": "v0"}, "expected a JSON list"),
        ([{"annotations": []}], r"field '\[0\].video_id': missing"),
        ([{"video_id": "../x", "annotations": []}], "video '../x'.*not a plain folder name"),
        ([{"video_id": "/abs/path", "annotations": []}], "not a plain folder name"),
        ([{"video_id": 7, "annotations": []}], "expected a string"),
        ([{"video_id": "v0", "annotations": {}}], "video 'v0': field 'annotations'"),
        ([{"video_id": "v0"}, {"video_id": "v0", "annotations": []}], "listed twice|field 'annotations'"),
        (bad(frame="3"), r"video 'v0': field 'annotations\[0\].bboxes\[0\].frame'"),
        (bad(frame=-1), "non-negative integer"),
        (bad(x1="10"), r"field 'annotations\[0\].bboxes\[0\].x1': expected a number"),
        (bad(y2=True), "expected a number"),
        (bad(x2=5), "inverted or empty box"),
        (bad(x1=-3), "negative coordinate"),
    ],
)
def test_bad_annotations_name_file_video_field(tmp_path, data, pattern):
    path = write(tmp_path, data)
    with pytest.raises(DatasetError, match=pattern) as info:
        load_annotations(path)
    assert str(path) in str(info.value)


def test_missing_coordinate_and_duplicate_frame(tmp_path):
    data = bad()
    del data[0]["annotations"][0]["bboxes"][0]["y1"]
    with pytest.raises(DatasetError, match=r"bboxes\[0\].y1': missing"):
        load_annotations(write(tmp_path, data))
    data = bad()
    data[0]["annotations"].append({"bboxes": [{"frame": 3, "x1": 1, "y1": 1, "x2": 2, "y2": 2}]})
    with pytest.raises(DatasetError, match="frame 3 has two boxes"):
        load_annotations(write(tmp_path, data))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_annotations(tmp_path / "nope.json")


def detections(*boxes):
    return [{"video_id": "v0", "detections": [{"bboxes": list(boxes)}]}]


def test_prediction_file_scores_are_read_and_a_frame_may_hold_several_boxes(tmp_path):
    path = write(
        tmp_path,
        detections(
            {"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5, "score": 0.2},
            {"frame": 3, "x1": 10, "y1": 10, "x2": 20, "y2": 20, "score": 0.9},
            {"frame": 4, "x1": 1, "y1": 1, "x2": 5, "y2": 5, "score": 0.5},
        ),
    )
    loaded = load_detections(path)
    assert loaded.scored
    assert loaded.boxes == {
        "v0": {3: [(10.0, 10.0, 20.0, 20.0, 0.9), (1.0, 1.0, 5.0, 5.0, 0.2)], 4: [(1.0, 1.0, 5.0, 5.0, 0.5)]}
    }
    save_annotations(tmp_path / "again.json", loaded.boxes, key="detections")
    assert load_detections(tmp_path / "again.json") == loaded


def test_prediction_file_without_scores_counts_each_box_as_one(tmp_path):
    path = write(tmp_path, detections({"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5}))
    loaded = load_detections(path)
    assert not loaded.scored and loaded.boxes == {"v0": {3: [(1.0, 1.0, 5.0, 5.0, 1.0)]}}
    assert load_annotations(path, key="detections") == {"v0": {3: (1.0, 1.0, 5.0, 5.0)}}


@pytest.mark.parametrize(
    "boxes, pattern",
    [
        (
            [
                {"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5, "score": 0.5},
                {"frame": 4, "x1": 1, "y1": 1, "x2": 5, "y2": 5},
            ],
            r"bboxes\[1\].score': this box lacks a score and an earlier one did not",
        ),
        (
            [
                {"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5},
                {"frame": 3, "x1": 2, "y1": 1, "x2": 5, "y2": 5},
            ],
            "frame 3 has two boxes and no scores",
        ),
        (
            [{"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5, "score": 1.5}],
            r"score': expected a score in \[0, 1\]",
        ),
        ([{"frame": 3, "x1": 1, "y1": 1, "x2": 5, "y2": 5, "score": "high"}], "score': expected a number"),
    ],
)
def test_bad_prediction_scores_name_file_video_field(tmp_path, boxes, pattern):
    path = write(tmp_path, detections(*boxes))
    with pytest.raises(DatasetError, match=pattern) as info:
        load_detections(path)
    assert str(path) in str(info.value) and "video 'v0'" in str(info.value)
