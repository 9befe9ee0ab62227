"""Fit a drawn topology's widths to a parameter cap, so that every draw is a network that fits.

The search draws the shape of a network (blocks, convs, kinds, transitions, BN, head) and *relative*
widths; ``fit_to_cap`` then scales all widths together by the largest factor whose network still has
fewer parameters than the cap. Most accuracy per parameter is found near the cap, and a draw no longer
fails for being too wide: the only misses left are topologies that cannot fit even at the narrowest
widths, or that see too little of the image (RF), which the space is drawn to avoid.
"""

from __future__ import annotations

from collections.abc import Callable

from mnist_challenge import ArchSpec, UserError, build_model, count_params

MIN_WIDTH = 2  # channels of the narrowest conv a fitted network may have
SCALE_RANGE = (1.0, 256.0)  # channels of a relative width of 1.0, from the narrowest to the widest net tried
BISECTIONS = 24  # halvings of the scale range: far finer than one channel


def width(scale: float, relative: float, max_channels: int) -> int:
    """Channels of a conv of ``relative`` width at ``scale``: rounded, at least MIN_WIDTH."""
    return max(MIN_WIDTH, min(max_channels, round(scale * relative)))


def fit_to_cap(build: Callable[[float], ArchSpec], cap: int) -> tuple[ArchSpec, float]:
    """The widest network ``build(scale)`` with fewer than ``cap`` parameters, and its scale.

    Parameters grow with the scale (roughly as its square), so bisection finds the largest scale under
    the cap; rounding makes the count step, not always rise, so the best spec seen under the cap is
    kept. ``UserError`` when even the narrowest network is over the cap."""
    lo, hi = SCALE_RANGE
    best: tuple[ArchSpec, float, int] | None = None
    for _ in range(BISECTIONS):
        scale = (lo * hi) ** 0.5  # geometric: parameters grow as a power of the scale
        try:
            spec = build(scale)
        except UserError:  # wider than any spec may be (MAX_CONV_WEIGHTS): as good as over the cap
            hi = scale
            continue
        params = count_params(build_model(spec))
        if params < cap:
            lo = scale
            if best is None or params > best[2]:
                best = (spec, scale, params)
        else:
            hi = scale
    if best is None:
        narrowest = build(SCALE_RANGE[0])
        params = count_params(build_model(narrowest))
        if params >= cap:
            raise UserError(f"even at its narrowest ({params:,} params) this topology does not fit under {cap:,}")
        best = (narrowest, SCALE_RANGE[0], params)
    return best[0], best[1]
