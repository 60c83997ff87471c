"""The COCO-pretrained YOLOv8n weights `make demo` starts from, in this order: the file the user names, the
shared one beside the repository, ultralytics' own download of ``yolov8n.pt`` (only when ultralytics says a
network is reachable, which ``YOLO_OFFLINE=1`` rules out), or none: random weights.

``python -m refdet_edge.demo.yolo`` prints the chosen path on stdout (nothing at all for random weights) and
says on stderr where the weights come from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

DOWNLOAD_NAME = "yolov8n.pt"


def _online() -> bool:
    from ultralytics.utils import is_online

    return is_online()


def _download(target: Path) -> Path:
    from ultralytics.utils.downloads import attempt_download_asset

    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(attempt_download_asset(target))


def choose_weights(
    given: str | None,
    shared: Path,
    cache: Path,
    online: Callable[[], bool] = _online,
    download: Callable[[Path], Path] = _download,
) -> tuple[Path | None, str]:
    """(weights or None, one line saying where they come from). A ``given`` file that does not exist is an
    error; a failed download falls back to random weights."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"YOLO_WEIGHTS={given}: no such file")
        return path, f"COCO weights: {path} (YOLO_WEIGHTS)"
    if shared.is_file():
        return shared, f"COCO weights: {shared} (shared folder)"
    if cache.is_file():
        return cache, f"COCO weights: {cache} (downloaded by ultralytics before)"
    if not online():
        return None, (
            "no COCO weights and no network (or YOLO_OFFLINE=1): training from random weights; "
            "make demo YOLO_WEIGHTS=path/to/yolov8n.pt, or YOLO_OFFLINE=0 for ultralytics' download"
        )
    try:
        path = download(cache)
    except Exception as err:  # any failure of the download: the demo goes on from random weights
        return None, f"ultralytics' download of {DOWNLOAD_NAME} failed ({err}): training from random weights"
    if not path.is_file():
        return None, f"ultralytics' download of {DOWNLOAD_NAME} wrote no file: training from random weights"
    return path, f"COCO weights: {path} (network reachable: downloaded {DOWNLOAD_NAME} through ultralytics)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refdet_edge.demo.yolo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--given", default="", help="The user's YOLOv8n .pt (YOLO_WEIGHTS); empty: none.")
    parser.add_argument("--shared", type=Path, required=True, help="The shared COCO weights, if present.")
    parser.add_argument("--cache", type=Path, required=True, help="Where ultralytics' download goes.")
    args = parser.parse_args(argv)
    try:
        path, why = choose_weights(args.given or None, args.shared, args.cache)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(why, file=sys.stderr)
    if path is not None:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
