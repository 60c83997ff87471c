"""Click options that several commands share (light: only click is imported)."""

from __future__ import annotations

import click

verify_topk_option = click.option(
    "--verify-topk",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Candidates per frame the support encoder verifies (0: none), counted in the per-frame path.",
)
verify_scale_option = click.option(
    "--verify-scale",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Verification crops from frames at S x --imgsz (the per-frame input; the backbone sees --imgsz).",
)
