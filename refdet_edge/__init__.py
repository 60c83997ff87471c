"""refdet-edge: reference-based object detection for drone video."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

__version__ = "0.1.0"
