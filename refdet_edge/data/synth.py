"""A seeded, deterministic generator of small drone-video datasets in the layout of DESIGN.md.

Each video is one target object (a coloured shape with a pattern) filmed by a drone-like camera that drifts,
turns and changes altitude over procedurally textured terrain (fields, water, forest, roads, roofs). Look-alike
distractors (the target's shape in another colour, its colour in another shape, its shape and colour with
another pattern) lie on the ground all the time; the target itself is visible only in a few intervals covering
about a quarter of the frames (at least 60% of the frames are background), by default at 10-60 px in a 1280x720
frame (``frame_size``, ``target_px`` and ``look_alikes`` choose others: the demo's small frames with large
targets and fewer look-alikes).
The reference photos show the target from the ground: much larger, tilted in perspective, under other light,
on another background.

Everything is drawn from ``numpy.random.default_rng([seed, video_index])`` and encoded with OpenCV, so the same
seed gives byte-identical files. ``splits.json`` splits every video in time (70% train, 15% val, 15% test), and
every split holds target intervals.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from refdet_edge.data.annotations import Box, save_annotations
from refdet_edge.data.splits import SPLITS_FILE, save_splits, temporal_splits
from refdet_edge.preprocess import encode_jpeg

FRAME_SIZE = (1280, 720)
TARGET_PX = (14.0, 50.0)  # range of the target's long side before rotation, in frame pixels (log-uniform)
LOOK_ALIKES = (4, 6)  # range of the number of look-alike distractors per video
DISTRACTOR_SCALE = (12 / 14, 42 / 50)  # look-alike sizes relative to the ends of the target range
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
JPEG_QUALITY = 90
SPRITE = 128  # side of the canvas objects are drawn on before being warped into a frame

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "capsule", "ring", "chevron")
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 40),
    "blue": (35, 75, 215),
    "purple": (140, 45, 190),
    "pink": (240, 110, 180),
    "white": (238, 238, 238),
    "black": (28, 28, 28),
    "cyan": (25, 195, 205),
    "lime": (150, 235, 60),
}
PATTERNS = ("solid", "stripes", "checker", "dots", "halves")


@dataclass(frozen=True)
class ObjectSpec:
    """What an object looks like: a shape filled with a pattern of two colours."""

    shape: str
    colour: str
    colour2: str
    pattern: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}"


def _shape_mask(shape: str) -> np.ndarray:
    mask = np.zeros((SPRITE, SPRITE), np.uint8)
    c, r = SPRITE // 2, SPRITE // 2 - 4

    def poly(points: list[tuple[float, float]]) -> None:
        cv2.fillPoly(mask, [np.round(np.array(points)).astype(np.int32)], 255, cv2.LINE_AA)

    def regular(n: int, radius: float, start: float) -> list[tuple[float, float]]:
        return [
            (
                c + radius * math.cos(start + 2 * math.pi * k / n),
                c + radius * math.sin(start + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]

    if shape == "circle":
        cv2.circle(mask, (c, c), r, 255, -1, cv2.LINE_AA)
    elif shape == "square":
        poly(
            [
                (c - r * 0.8, c - r * 0.8),
                (c + r * 0.8, c - r * 0.8),
                (c + r * 0.8, c + r * 0.8),
                (c - r * 0.8, c + r * 0.8),
            ]
        )
    elif shape == "triangle":
        poly(regular(3, r, -math.pi / 2))
    elif shape == "star":
        outer, inner = regular(5, r, -math.pi / 2), regular(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        poly([p for pair in zip(outer, inner, strict=True) for p in pair])
    elif shape == "cross":
        w = r * 0.38
        poly(
            [
                (c - w, c - r),
                (c + w, c - r),
                (c + w, c - w),
                (c + r, c - w),
                (c + r, c + w),
                (c + w, c + w),
                (c + w, c + r),
                (c - w, c + r),
                (c - w, c + w),
                (c - r, c + w),
                (c - r, c - w),
                (c - w, c - w),
            ]
        )
    elif shape == "diamond":
        poly([(c, c - r), (c + r * 0.62, c), (c, c + r), (c - r * 0.62, c)])
    elif shape == "hexagon":
        poly(regular(6, r, 0.0))
    elif shape == "capsule":
        h = r * 0.45
        cv2.rectangle(mask, (int(c - r + h), int(c - h)), (int(c + r - h), int(c + h)), 255, -1)
        cv2.circle(mask, (int(c - r + h), c), int(h), 255, -1, cv2.LINE_AA)
        cv2.circle(mask, (int(c + r - h), c), int(h), 255, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(mask, (c, c), r, 255, -1, cv2.LINE_AA)
        cv2.circle(mask, (c, c), int(r * 0.5), 0, -1, cv2.LINE_AA)
    elif shape == "chevron":
        poly(
            [
                (c - r, c - r * 0.7),
                (c, c + r * 0.1),
                (c + r, c - r * 0.7),
                (c + r, c + r * 0.1),
                (c, c + r * 0.9),
                (c - r, c + r * 0.1),
            ]
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def render_sprite(spec: ObjectSpec) -> np.ndarray:
    """The object as a SPRITE x SPRITE RGBA uint8 image (alpha = shape)."""
    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE]
    if spec.pattern == "solid":
        second = np.zeros((SPRITE, SPRITE), bool)
    elif spec.pattern == "stripes":
        second = ((xx + yy) // 14) % 2 == 1
    elif spec.pattern == "checker":
        second = ((xx // 22) + (yy // 22)) % 2 == 1
    elif spec.pattern == "dots":
        second = ((xx % 26 - 13) ** 2 + (yy % 26 - 13) ** 2) < 36
    elif spec.pattern == "halves":
        second = xx > SPRITE // 2
    else:
        raise ValueError(f"unknown pattern {spec.pattern!r}")
    rgb = np.where(second[..., None], COLOURS[spec.colour2], COLOURS[spec.colour]).astype(np.uint8)
    alpha = _shape_mask(spec.shape)
    edge = cv2.morphologyEx(alpha, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    rgb[edge] = (rgb[edge] * 0.55).astype(np.uint8)
    return np.dstack([rgb, alpha])


def paste(canvas: np.ndarray, sprite: np.ndarray, matrix: np.ndarray) -> Box | None:
    """Alpha-blend ``sprite`` (RGBA) into ``canvas`` (RGB, in place) through the 2x3 affine ``matrix``.

    Returns the tight box of the pasted pixels (alpha > 50%) clipped to the canvas, or None if none landed.
    """
    h, w = sprite.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ matrix.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, canvas.shape[1]), min(y1, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = matrix.copy()
    shifted[:, 2] -= (x0, y0)
    patch = cv2.warpAffine(sprite, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = patch[..., 3:].astype(np.float32) / 255.0
    roi = canvas[y0:y1, x0:x1]
    roi[:] = (roi * (1 - alpha) + patch[..., :3] * alpha).astype(np.uint8)
    ys, xs = np.nonzero(alpha[..., 0] > 0.5)
    if len(xs) == 0:
        return None
    return (float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1))


def _noise(rng: np.random.Generator, shape: tuple[int, int], octaves: tuple[int, ...]) -> np.ndarray:
    """Multi-octave value noise in [0, 1]; ``octaves`` are the grid cell sizes in pixels."""
    h, w = shape
    total = np.zeros(shape, np.float32)
    for k, cell in enumerate(octaves):
        grid = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        total += cv2.resize(grid, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[:h, :w] / (
            k + 1
        )
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def render_terrain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An aerial-looking RGB landscape: fields, water, forest, roads and roofs."""
    h, w = shape
    height = _noise(rng, shape, (512, 256, 96, 32))
    moisture = _noise(rng, shape, (384, 128, 48))
    grain = _noise(rng, shape, (6, 3))
    stops = np.array([0.0, 0.22, 0.27, 0.5, 0.72, 1.0])
    dry = np.array(
        [(40, 70, 110), (60, 95, 120), (170, 160, 120), (135, 150, 80), (95, 120, 60), (60, 80, 45)], float
    )
    wet = np.array(
        [(35, 60, 100), (55, 85, 110), (120, 125, 95), (80, 125, 55), (50, 95, 45), (35, 65, 35)], float
    )
    base = np.stack([np.interp(height, stops, dry[:, c]) for c in range(3)], -1)
    lush = np.stack([np.interp(height, stops, wet[:, c]) for c in range(3)], -1)
    image = base * (1 - moisture[..., None]) + lush * moisture[..., None]
    image *= (0.8 + 0.4 * grain)[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        points = np.cumsum(rng.normal(0, 260, (6, 2)), 0) + rng.uniform((0, 0), (w, h))
        colour = tuple(int(v) for v in rng.integers(95, 150, 3))
        cv2.polylines(image, [points.astype(np.int32)], False, colour, int(rng.integers(10, 26)), cv2.LINE_AA)
    for _ in range(int(rng.integers(15, 40))):
        centre = rng.uniform((0, 0), (w, h))
        size = rng.uniform(40, 130, 2)
        box = cv2.boxPoints(
            (
                (float(centre[0]), float(centre[1])),
                (float(size[0]), float(size[1])),
                float(rng.uniform(0, 180)),
            )
        )
        roof = tuple(int(v) for v in (rng.integers(70, 200), rng.integers(60, 110), rng.integers(50, 100)))
        cv2.fillPoly(image, [box.astype(np.int32)], roof, cv2.LINE_AA)
    return image


def _camera_path(
    rng: np.random.Generator, frames: int, world: tuple[int, int], frame_size: tuple[int, int]
) -> list[np.ndarray]:
    """Per-frame 2x3 world->frame affine maps of a drone drifting, turning and changing altitude."""
    wh, ww = world
    fw, fh = frame_size
    margin = 0.5 * math.hypot(fw, fh) / 0.85  # half the frame diagonal at the lowest zoom
    pos = np.array([ww / 2, wh / 2], float)
    heading = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(2.5, 6.0)
    zoom_phase, zoom_amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.03, 0.12)
    angle = rng.uniform(-10, 10)
    maps = []
    for t in range(frames):
        heading += rng.normal(0, 0.04)
        step = speed * np.array([math.cos(heading), math.sin(heading)])
        if not (margin < pos[0] + step[0] < ww - margin and margin < pos[1] + step[1] < wh - margin):
            heading += math.pi * rng.uniform(0.6, 1.0)
            step = speed * np.array([math.cos(heading), math.sin(heading)])
        pos = np.clip(pos + step, margin, (ww - margin, wh - margin))
        angle += rng.normal(0, 0.15)
        zoom = 1.0 + zoom_amp * math.sin(zoom_phase + t / 40.0)
        matrix = cv2.getRotationMatrix2D((float(pos[0]), float(pos[1])), angle, zoom)
        matrix[:, 2] += (fw / 2 - pos[0], fh / 2 - pos[1])
        maps.append(matrix)
    return maps


def _object_matrix(camera: np.ndarray, world_xy: np.ndarray, angle: float, size: float) -> np.ndarray:
    """Sprite pixels -> frame pixels for an object of long side ``size`` world px at ``world_xy``."""
    local = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), angle, size / SPRITE)
    local[:, 2] += world_xy - SPRITE / 2
    return camera @ np.vstack([local, (0, 0, 1)])


def _to_world(camera: np.ndarray, frame_xy: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(camera) @ np.append(frame_xy, 1.0)


def _intervals(rng: np.random.Generator, start: int, end: int, visible_share: float) -> list[tuple[int, int]]:
    """Non-overlapping [a, b) runs inside [start, end) covering about ``visible_share`` of it."""
    length = end - start
    visible = max(1, round(visible_share * length))
    count = max(math.ceil(visible / 40), round(visible / rng.uniform(10, 30)), 1)
    sizes = np.full(count, visible // count)
    sizes[: visible % count] += 1
    gaps = rng.multinomial(length - visible, np.full(count + 1, 1 / (count + 1)))
    runs, cursor = [], start
    for size, gap in zip(sizes, gaps[:-1], strict=True):
        cursor += int(gap)
        runs.append((cursor, cursor + int(size)))
        cursor += int(size)
    return runs


def _look_alikes(rng: np.random.Generator, spec: ObjectSpec, count: int) -> list[ObjectSpec]:
    """Objects one attribute away from ``spec``: another colour, another shape, or another pattern."""
    others = [c for c in COLOURS if c not in (spec.colour, spec.colour2)]
    specs = []
    for k in range(count):
        kind = k % 3
        if kind == 0:
            specs.append(ObjectSpec(spec.shape, str(rng.choice(others)), spec.colour2, spec.pattern))
        elif kind == 1:
            shape = str(rng.choice([s for s in SHAPES if s != spec.shape]))
            specs.append(ObjectSpec(shape, spec.colour, spec.colour2, spec.pattern))
        else:
            pattern = str(rng.choice([p for p in PATTERNS if p != spec.pattern]))
            specs.append(ObjectSpec(spec.shape, spec.colour, str(rng.choice(others)), pattern))
    return specs


def render_reference(rng: np.random.Generator, sprite: np.ndarray) -> np.ndarray:
    """A ground-level photo of the object: large, tilted, under other light, on a close-up background."""
    side = int(rng.integers(200, 320))
    tint = rng.uniform(70, 200, 3)
    floor = (_noise(rng, (side, side), (64, 16, 4))[..., None] * 70 + tint).clip(0, 255).astype(np.uint8)
    obj = side * rng.uniform(0.5, 0.75)
    jitter = rng.uniform(-0.14, 0.14, (4, 2)) * obj
    centre = side / 2 + rng.uniform(-0.08, 0.08, 2) * side
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * obj
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    dst = (corners @ rot.T + jitter + centre).astype(np.float32)
    src = np.array([[0, 0], [SPRITE, 0], [SPRITE, SPRITE], [0, SPRITE]], np.float32)
    warped = cv2.warpPerspective(
        sprite, cv2.getPerspectiveTransform(src, dst), (side, side), flags=cv2.INTER_CUBIC
    )
    alpha = warped[..., 3:].astype(np.float32) / 255.0
    shadow = np.roll(cv2.GaussianBlur(alpha, (0, 0), side / 40), (int(side / 30), int(side / 25)), (0, 1))
    image = floor.astype(np.float32) * (1 - 0.45 * shadow[..., None])
    image = image * (1 - alpha) + warped[..., :3] * alpha
    gains = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.7, 1.3)
    image = 255.0 * (np.clip(image * gains, 0, 255) / 255.0) ** rng.uniform(0.75, 1.3)
    sigma = rng.uniform(0.0, 1.2)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0.3 else image


def _target_specs(rng: np.random.Generator, count: int) -> list[ObjectSpec]:
    """``count`` targets, no two sharing both shape and colour."""
    combos = list(itertools.product(SHAPES, COLOURS))
    order = rng.permutation(len(combos))
    specs = []
    for i in order[:count]:
        shape, colour = combos[i]
        colour2 = str(rng.choice([c for c in COLOURS if c != colour]))
        specs.append(ObjectSpec(shape, colour, colour2, str(rng.choice(PATTERNS))))
    return specs


def _render_video(
    out: Path,
    video_id: str,
    spec: ObjectSpec,
    frames: int,
    seed: int,
    index: int,
    refs: int,
    frame_size: tuple[int, int],
    target_px: tuple[float, float],
    look_alikes: tuple[int, int],
) -> dict[int, Box]:
    rng = np.random.default_rng([seed, index, 1])
    sample = out / "samples" / video_id
    (sample / "frames").mkdir(parents=True, exist_ok=True)
    (sample / "object_images").mkdir(parents=True, exist_ok=True)
    sprite = render_sprite(spec)
    for k in range(refs):
        _write_jpeg(sample / "object_images" / f"img_{k + 1}.jpg", render_reference(rng, sprite))

    world = (2304, 3072)
    terrain = render_terrain(rng, (world[0] // 2, world[1] // 2))  # half resolution: 4x cheaper to draw
    cameras = _camera_path(rng, frames, world, frame_size)
    half_to_world = np.diag([2.0, 2.0, 1.0])
    fw, fh = frame_size
    small, large = target_px
    edge = 1.2 * large  # keep the target's centre this far inside the frame
    centre = np.array([fw / 2, fh / 2])
    distractors = []
    for look in _look_alikes(rng, spec, int(rng.integers(look_alikes[0], look_alikes[1] + 1))):
        t = int(rng.integers(0, frames))
        where_ = _to_world(cameras[t], centre + rng.uniform(-0.4, 0.4, 2) * (fw, fh))
        distractors.append(
            (
                render_sprite(look),
                where_,
                rng.uniform(0, 360),
                rng.uniform(small * DISTRACTOR_SCALE[0], large * DISTRACTOR_SCALE[1]),
            )
        )

    target_size = math.exp(rng.uniform(math.log(small), math.log(large)))
    visible_share = rng.uniform(0.2, 0.32)
    placements: dict[int, tuple[np.ndarray, float]] = {}
    split = temporal_splits({video_id: frames}, SPLIT_FRACTIONS)
    for ranges in split.values():
        for start, end in ranges.get(video_id, []):
            for a, b in _intervals(rng, start, end, visible_share):
                mid = (a + b) // 2
                pose = (_to_world(cameras[mid], centre), rng.uniform(0, 360))
                for _ in range(30):
                    candidate = _to_world(cameras[mid], centre + rng.uniform(-0.35, 0.35, 2) * (fw, fh))
                    inside = [cameras[t] @ np.append(candidate, 1.0) for t in range(a, b)]
                    if all(edge < x < fw - edge and edge < y < fh - edge for x, y in inside):
                        pose = (candidate, pose[1])
                        break
                placements.update({t: pose for t in range(a, b)})

    boxes: dict[int, Box] = {}
    light_phase = rng.uniform(0, 2 * math.pi)
    for t, camera in enumerate(cameras):
        frame = cv2.warpAffine(
            terrain, camera @ half_to_world, frame_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        for d_sprite, d_xy, d_angle, d_size in distractors:
            if np.all(np.abs(camera @ np.append(d_xy, 1.0) - centre) < centre + 80):
                paste(frame, d_sprite, _object_matrix(camera, d_xy, d_angle, d_size))
        if t in placements:
            xy, angle = placements[t]
            box = paste(frame, sprite, _object_matrix(camera, xy, angle, target_size))
            if box is not None:
                boxes[t] = box
        gain = 1.0 + 0.08 * math.sin(light_phase + t / 25.0)
        frame = cv2.convertScaleAbs(frame, alpha=gain)
        _write_jpeg(sample / "frames" / f"{t:06d}.jpg", frame)
    return boxes


def _render_video_job(args: tuple) -> dict[int, Box]:
    cv2.setNumThreads(1)
    return _render_video(*args)


def generate_synthetic(
    out: str | Path,
    videos: int = 8,
    frames: int = 120,
    seed: int = 0,
    refs: int = 3,
    workers: int | None = None,
    frame_size: tuple[int, int] = FRAME_SIZE,
    target_px: tuple[float, float] = TARGET_PX,
    look_alikes: tuple[int, int] = LOOK_ALIKES,
) -> Path:
    """Write a synthetic dataset of ``videos`` videos of ``frames`` frames into ``out``; returns ``out``.

    Frames are ``frame_size`` (width, height) pixels; each target's long side is drawn log-uniformly from
    ``target_px`` (min, max) once per video, and the number of look-alike distractors from ``look_alikes``
    (min, max). Videos are rendered in ``workers`` processes (default: one per CPU core); the same arguments
    always give byte-identical files, whatever the number of workers. ``out`` may exist; files it already
    holds for the same video ids are overwritten.
    """
    if videos < 1 or frames < 20 or refs < 1:
        raise ValueError(f"need videos >= 1, frames >= 20 and refs >= 1, got {videos}, {frames}, {refs}")
    if videos > len(SHAPES) * len(COLOURS):
        raise ValueError(f"at most {len(SHAPES) * len(COLOURS)} distinct targets, asked for {videos}")
    small, large = target_px
    if not 4 <= small <= large:
        raise ValueError(f"target sizes need 4 <= min <= max, got {small:g}-{large:g} px")
    if min(frame_size) < 4 * large:
        raise ValueError(
            f"frames of {frame_size[0]}x{frame_size[1]} px are too small for {large:g} px targets "
            f"(each side must be at least 4 x the largest target, {4 * large:g} px)"
        )
    if not 0 <= look_alikes[0] <= look_alikes[1]:
        raise ValueError(f"look-alikes need 0 <= min <= max, got {look_alikes[0]}-{look_alikes[1]}")
    out = Path(out)
    specs = _target_specs(np.random.default_rng([seed, 0xD5]), videos)
    video_ids = [f"{spec.name}_{index}" for index, spec in enumerate(specs)]
    jobs = [
        (
            out,
            vid,
            spec,
            frames,
            seed,
            index,
            refs,
            tuple(frame_size),
            (float(small), float(large)),
            look_alikes,
        )
        for index, (vid, spec) in enumerate(zip(video_ids, specs, strict=True))
    ]
    workers = min(videos, workers or os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render_video_job, jobs))
    else:
        results = [_render_video(*job) for job in jobs]
    annotations = dict(zip(video_ids, results, strict=True))
    save_annotations(out / "annotations" / "annotations.json", annotations)
    save_splits(out / SPLITS_FILE, temporal_splits({v: frames for v in annotations}, SPLIT_FRACTIONS))
    return out


def _write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.write_bytes(encode_jpeg(image_rgb, JPEG_QUALITY))
