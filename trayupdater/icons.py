"""Tray and application icons, drawn with Pillow so every state and size is reproducible.

The tray shows one of four looks chosen from the worker's phase: green check (serving),
blue circular arrow (checking, downloading, updating, rolling back, restarting), red "!"
(nothing serves) and grey pause bars (starting, no version yet, stopping). Each image is
drawn at four times its final size and scaled down, which keeps 16 px icons crisp
instead of letting the tray host blur one large image.

``python -m trayupdater.icons OUTDIR`` (or ``write_assets``) regenerates the files kept in
``assets/``: the app icon as PNG, ICO and ICNS and one PNG per tray state.
"""

from __future__ import annotations

import enum
import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from trayupdater.errors import TrayUpdaterError
from trayupdater.status import Phase


class Look(str, enum.Enum):
    """What the tray icon shows; several phases share one look."""

    RUNNING = "running"
    BUSY = "busy"
    ERROR = "error"
    IDLE = "idle"


_LOOK_OF_PHASE = {
    Phase.RUNNING: Look.RUNNING,
    Phase.CHECKING: Look.BUSY,
    Phase.DOWNLOADING: Look.BUSY,
    Phase.UPDATING: Look.BUSY,
    Phase.ROLLING_BACK: Look.BUSY,
    Phase.RESTARTING: Look.BUSY,
    Phase.ERROR: Look.ERROR,
    Phase.STARTING: Look.IDLE,
    Phase.NO_VERSION: Look.IDLE,
    Phase.STOPPING: Look.IDLE,
}

_COLOURS = {
    Look.RUNNING: (46, 158, 79),
    Look.BUSY: (47, 111, 219),
    Look.ERROR: (217, 59, 59),
    Look.IDLE: (128, 134, 145),
}
_WHITE = (255, 255, 255, 255)
_TRACK = (120, 160, 235, 255)  # the not-yet-downloaded part of the progress ring
_BADGE = (245, 158, 11)  # amber: "the last operation failed, but it still serves"
_SUPERSAMPLE = 4
_UNITS = 64.0  # glyphs are described on a 64x64 grid and scaled to the requested size

Scale = Callable[[float], float]  # grid units -> pixels of the supersampled canvas
Painter = Callable[[ImageDraw.ImageDraw, Scale], None]

ICO_SIZES = (16, 20, 24, 32, 40, 48, 64, 128, 256)
TRAY_PNG_SIZE = 64


def look_for(phase: Phase | Look | str) -> Look:
    """The look for a phase (an enum member or its value); unknown phases look idle."""
    if isinstance(phase, Look):
        return phase
    try:
        return _LOOK_OF_PHASE[Phase(phase)]
    except ValueError:
        return Look.IDLE


def icon_image(
    phase: Phase | Look | str,
    size: int = TRAY_PNG_SIZE,
    *,
    warning: bool = False,
    progress: float | None = None,
) -> Image.Image:
    """The tray icon for ``phase`` (or a ``Look``) as an RGBA image of ``size`` x ``size`` px.

    ``warning`` adds an amber dot: the app still serves but the last operation failed.
    ``progress`` (0..1, busy look only) draws a download's progress as a ring, in eighths:
    finer steps would only re-send near-identical images to the tray host.
    """
    step = None if progress is None else max(0, min(8, int(progress * 8)))
    return _tray_image(look_for(phase), _checked_size(size), warning, step).copy()


def template_image(phase: Phase | Look | str, size: int = TRAY_PNG_SIZE) -> Image.Image:
    """The macOS menu-bar form of a look: black disc, glyph cut out, nothing else.

    macOS draws template images in the menu bar's own colour (light or dark mode); the
    image says so in ``info["template"]``, which the tray backend passes on to AppKit.
    """
    image = _template_image(look_for(phase), _checked_size(size)).copy()
    image.info["template"] = True
    return image


@functools.lru_cache(maxsize=16)
def _template_image(look: Look, size: int) -> Image.Image:
    def paint(draw: ImageDraw.ImageDraw, u: Scale) -> None:
        draw.ellipse(_box(u, 2, 2, 62, 62), fill=(0, 0, 0, 255))
        _GLYPHS[look](draw, u)

    coloured = _render(size, paint)
    # The glyph was drawn white: make it transparent, keep the disc black.
    red, _, _, alpha = coloured.split()
    mask = Image.eval(red, lambda v: 255 - v)
    black = Image.new("RGBA", coloured.size, (0, 0, 0, 0))
    black.putalpha(Image.composite(mask, Image.new("L", coloured.size, 0), alpha))
    return black


def app_icon(size: int = 256) -> Image.Image:
    """The application icon (executables, installers, the autostart entry)."""
    return _app_image(_checked_size(size)).copy()


def _checked_size(size: int) -> int:
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise TrayUpdaterError(f"icon size must be an integer from 8 to 1024 pixels, got {size!r}")
    return size


@functools.lru_cache(maxsize=128)
def _tray_image(look: Look, size: int, warning: bool, step: int | None = None) -> Image.Image:
    def paint(draw: ImageDraw.ImageDraw, u: Scale) -> None:
        draw.ellipse(_box(u, 2, 2, 62, 62), fill=_COLOURS[look])
        if step is not None and look is Look.BUSY:
            # The disc's rim fills clockwise from 12 o'clock: pale track, white done part.
            draw.arc(_box(u, 4, 4, 60, 60), 0, 360, fill=_TRACK, width=round(u(5)))
            if step:
                draw.arc(
                    _box(u, 4, 4, 60, 60), -90, -90 + 45 * step, fill=_WHITE, width=round(u(5))
                )
        _GLYPHS[look](draw, u)
        if warning:
            # Bottom right, where no glyph reaches its edge; the white ring separates it.
            draw.ellipse(_box(u, 38, 38, 64, 64), fill=_WHITE)
            draw.ellipse(_box(u, 42, 42, 60, 60), fill=_BADGE)

    return _render(size, paint)


@functools.lru_cache(maxsize=16)
def _app_image(size: int) -> Image.Image:
    def paint(draw: ImageDraw.ImageDraw, u: Scale) -> None:
        draw.rounded_rectangle(_box(u, 2, 2, 62, 62), radius=u(13), fill=_COLOURS[Look.BUSY])
        # A tray (open box) with an arrow rising out of it: "updates, from the tray".
        w = u(5.5)
        draw.line(
            [(u(14), u(34)), (u(14), u(50)), (u(50), u(50)), (u(50), u(34))],
            fill=_WHITE,
            width=round(w),
            joint="curve",
        )
        for x in (14, 50):
            draw.ellipse(_box(u, x - 2.75, 31.25, x + 2.75, 36.75), fill=_WHITE)
        draw.line([(u(32), u(43)), (u(32), u(22))], fill=_WHITE, width=round(w))
        draw.polygon([(u(20), u(25)), (u(32), u(11)), (u(44), u(25))], fill=_WHITE)

    return _render(size, paint)


def _render(size: int, paint: Painter) -> Image.Image:
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    scale = big / _UNITS

    def u(value: float) -> float:
        return value * scale

    paint(ImageDraw.Draw(canvas), u)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _box(u: Scale, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [u(x0), u(y0), u(x1), u(y1)]


def _check(draw: ImageDraw.ImageDraw, u: Scale) -> None:
    draw.line(
        [(u(18), u(33)), (u(28), u(43)), (u(46), u(22))],
        fill=_WHITE,
        width=round(u(8)),
        joint="curve",
    )


def _arrow(draw: ImageDraw.ImageDraw, u: Scale) -> None:
    # A 290-degree arc with an arrow head at its end: the usual "refresh" sign, which
    # survives down to 16 px where two separate arrows would merge into a blob.
    cx = cy = 32.0
    r = 15.0
    start, end = -60.0, 230.0
    draw.arc(
        _box(u, cx - r, cy - r, cx + r, cy + r),
        start=start,
        end=end,
        fill=_WHITE,
        width=round(u(7)),
    )
    tip = math.radians(start)
    px, py = cx + r * math.cos(tip), cy + r * math.sin(tip)
    # Head points along the tangent, against the drawing direction of the arc.
    tx, ty = math.sin(tip), -math.cos(tip)
    nx, ny = math.cos(tip), math.sin(tip)
    head = [
        (px + tx * 10, py + ty * 10),
        (px - nx * 10 - tx * 3, py - ny * 10 - ty * 3),
        (px + nx * 10 - tx * 3, py + ny * 10 - ty * 3),
    ]
    draw.polygon([(u(x), u(y)) for x, y in head], fill=_WHITE)


def _exclamation(draw: ImageDraw.ImageDraw, u: Scale) -> None:
    draw.rounded_rectangle(_box(u, 27.5, 13, 36.5, 38), radius=u(4), fill=_WHITE)
    draw.ellipse(_box(u, 27, 42, 37, 52), fill=_WHITE)


def _pause(draw: ImageDraw.ImageDraw, u: Scale) -> None:
    for x in (20, 36):
        draw.rounded_rectangle(_box(u, x, 19, x + 8, 45), radius=u(2.5), fill=_WHITE)


_GLYPHS: dict[Look, Painter] = {
    Look.RUNNING: _check,
    Look.BUSY: _arrow,
    Look.ERROR: _exclamation,
    Look.IDLE: _pause,
}


def write_assets(outdir: Path) -> list[Path]:
    """Write the app icon (PNG 256, ICO 16..256, ICNS) and one PNG per tray look."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    png = outdir / "trayupdater.png"
    app_icon(256).save(png, optimize=True)
    written.append(png)

    ico = outdir / "trayupdater.ico"
    # One drawing per size (not one image scaled by the encoder) keeps small sizes sharp.
    per_size = [app_icon(s) for s in ICO_SIZES]
    per_size[-1].save(ico, sizes=[(s, s) for s in ICO_SIZES], append_images=per_size[:-1])
    written.append(ico)

    icns = outdir / "trayupdater.icns"
    icns_sizes = (16, 32, 64, 128, 256, 512, 1024)
    largest, *rest = [app_icon(s) for s in reversed(icns_sizes)]
    largest.save(icns, append_images=rest)
    written.append(icns)

    for look in Look:
        path = outdir / f"tray-{look.value}.png"
        _tray_image(look, TRAY_PNG_SIZE, False).save(path, optimize=True)
        written.append(path)
    path = outdir / "tray-template.png"  # macOS menu bar (serving look)
    _template_image(Look.RUNNING, TRAY_PNG_SIZE).save(path, optimize=True)
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m trayupdater.icons OUTDIR", file=sys.stderr)
        return 2
    for path in write_assets(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
