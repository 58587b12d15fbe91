"""Procedural "one coloured shape on a plain background" scenes, generated in code.

Every image is 128x128 RGB (by default): a single circle, square or triangle in one of
six colours on a background of another colour, optionally small/large and optionally in a
corner. Captions follow a fixed grammar so the text side stays tiny:

    a red circle on a blue background                       (medium, centred: the plain phrasing)
    a small yellow triangle at the top left on a blue background

Nothing is downloaded; everything is a function of a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

# Saturated, well separated colours so "the nearest vocabulary colour" is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 65, 225),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# size word -> half-extent of the shape as a fraction of the image side ("" = medium).
SIZES: dict[str, float] = {"small": 0.13, "": 0.22, "large": 0.32}
# position phrase -> nominal centre as a fraction of the image side ("" = centred).
POSITIONS: dict[str, tuple[float, float]] = {
    "": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
# Share of captions that use the plain phrasing (medium size, centred).
PLAIN_FRACTION = 0.5
# Largest random offset of the centre (fraction of the side) and relative change of size.
JITTER_POS = 0.03
JITTER_SIZE = 0.08
# Keep this many pixels (at 128 px) between the shape and the image border.
BORDER = 4


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str = ""  # "", "small" or "large"
    position: str = ""  # "" or a key of POSITIONS
    dx: float = 0.0  # centre jitter, fraction of the side
    dy: float = 0.0
    ds: float = 0.0  # relative size jitter

    def as_dict(self) -> dict:
        return asdict(self)


def shape_geometry(scene: Scene, size: int = IMAGE_SIZE) -> tuple[float, float, float]:
    """Centre (cx, cy) and half-extent r of the shape, in pixels of a ``size`` image."""
    r = SIZES[scene.size] * (1.0 + scene.ds) * size
    px, py = POSITIONS[scene.position]
    border = BORDER * size / IMAGE_SIZE
    cx = float(np.clip((px + scene.dx) * size, r + border, size - r - border))
    cy = float(np.clip((py + scene.dy) * size, r + border, size - r - border))
    return cx, cy, r


def shape_polygon(shape: str, cx: float, cy: float, r: float):
    if shape == "square":
        h = 0.9 * r  # a square of the same half-extent looks much bigger than a circle
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # isosceles, pointing up, filling the r-box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    raise ValueError(shape)


def shape_mask(scene: Scene, size: int = IMAGE_SIZE, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage of the shape in [0, 1], shape (size, size) float32."""
    s = supersample
    cx, cy, r = shape_geometry(scene, size)
    img = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(img)
    cx, cy, r = cx * s, cy * s, r * s
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(shape_polygon(scene.shape, cx, cy, r), fill=255)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as a uint8 array of shape (size, size, 3)."""
    cover = shape_mask(scene, size)[..., None]
    fg = np.asarray(COLOURS[scene.colour], dtype=np.float32)
    bg = np.asarray(COLOURS[scene.background], dtype=np.float32)
    out = cover * fg + (1.0 - cover) * bg
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def caption_scene(scene: Scene) -> str:
    words = ["a"]
    if scene.size:
        words.append(scene.size)
    words += [scene.colour, scene.shape]
    if scene.position:
        words += ["at", "the", *scene.position.split()]
    words += ["on", "a", scene.background, "background"]
    return " ".join(words)


# The grammar both embedded models' captions share: "a [size] COLOUR SHAPE ... on a COLOUR background".
CAPTION_START = r"^\s*an?\s+(?:(?P<size>small|large|medium)\s+)?(?P<colour>\w+)\s+(?P<shape>\w+)"
CAPTION_END = r"\s+on\s+an?\s+(?P<background>\w+)\s+background\s*\.?\s*$"
_CAPTION_RE = re.compile(
    CAPTION_START
    + r"(?:\s+(?:at|in)\s+the\s+(?P<position>top left|top right|bottom left|bottom right|centre|center))?"
    + CAPTION_END
)


def match_caption(pattern: re.Pattern, caption: str) -> tuple[re.Match, str]:
    """The caption matched against a dataset's grammar, and its size word ("" for medium), or a ValueError."""
    m = pattern.match(caption.lower())
    if not m:
        raise ValueError(f"not a caption of this dataset: {caption!r}")
    size = m.group("size") or ""
    return m, "" if size == "medium" else size


def check_vocabulary(colour: str, shape: str, background: str, caption: str) -> None:
    """The palette and shapes both datasets draw from; a ValueError for a word outside them."""
    if colour not in COLOURS or background not in COLOURS or shape not in SHAPES:
        raise ValueError(f"word outside the vocabulary in {caption!r}")


def parse_caption(caption: str) -> Scene:
    """Inverse of :func:`caption_scene` (without jitter). Raises ValueError outside the vocabulary."""
    m, size = match_caption(_CAPTION_RE, caption)
    position = m.group("position") or ""
    position = "" if position in ("centre", "center") else position
    scene = Scene(colour=m.group("colour"), shape=m.group("shape"), background=m.group("background"),
                  size=size, position=position)
    check_vocabulary(scene.colour, scene.shape, scene.background, caption)
    return scene


def sample_scene(rng: np.random.Generator, plain_fraction: float = PLAIN_FRACTION, jitter: bool = True) -> Scene:
    """Draw one scene. About ``plain_fraction`` of scenes are medium and centred."""
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    others = [c for c in names if c != colour]
    background = others[rng.integers(len(others))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    if rng.random() < plain_fraction:
        size, position = "", ""
    else:  # any size/position combination except the plain one
        combos = [(s, p) for s in SIZES for p in POSITIONS if (s, p) != ("", "")]
        size, position = combos[rng.integers(len(combos))]
    if jitter:
        dx, dy = rng.uniform(-JITTER_POS, JITTER_POS, size=2)
        ds = rng.uniform(-JITTER_SIZE, JITTER_SIZE)
    else:
        dx = dy = ds = 0.0
    return Scene(colour, shape, background, size, position, float(dx), float(dy), float(ds))


def sample_dataset(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """``n`` images (uint8, n x size x size x 3) and their captions, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render_scene(scene, size)
        captions.append(caption_scene(scene))
    return images, captions


def all_captions() -> list[str]:
    """Every caption the grammar can produce (sorted, deterministic)."""
    out = []
    for colour in COLOURS:
        for background in COLOURS:
            if background == colour:
                continue
            for shape in SHAPES:
                for size in SIZES:
                    for position in POSITIONS:
                        out.append(caption_scene(Scene(colour, shape, background, size, position)))
    return sorted(out)


def _binary_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean mask by a disk of ``radius`` pixels (pure numpy)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            shifted = np.zeros_like(mask)
            ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
            xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
            shifted[yd, xd] = mask[ys, xs]
            out |= shifted
    return out


def expected_layout(prompt: str, size: int = IMAGE_SIZE, margin: float | None = None):
    """What a correct picture of ``prompt`` looks like, for checking generated images.

    Returns ``(fg_rgb, bg_rgb, core, clear)``: the shape and background colours (uint8 RGB
    tuples) and two boolean (size, size) masks. ``core`` is inside the shape whatever the
    jitter (the intersection of the shape over a grid of the extreme jitters), shrunk by
    ``margin`` pixels when that leaves at least a few pixels; ``clear`` is background whatever
    the jitter (outside the union over the jitters), grown by ``margin`` pixels. ``margin``
    defaults to 4% of the side, a tolerance for a model's imprecise edges.
    """
    scene = parse_caption(prompt)
    if margin is None:
        margin = 0.04 * size
    m = int(round(margin))
    inter = np.ones((size, size), dtype=bool)
    union = np.zeros((size, size), dtype=bool)
    for dx in np.linspace(-JITTER_POS, JITTER_POS, 5):
        for dy in np.linspace(-JITTER_POS, JITTER_POS, 5):
            for ds in (-JITTER_SIZE, 0.0, JITTER_SIZE):
                cover = shape_mask(Scene(scene.colour, scene.shape, scene.background, scene.size,
                                         scene.position, float(dx), float(dy), ds), size)
                inter &= cover >= 1.0
                union |= cover > 0.0
    core = inter
    for k in range(m, 0, -1):  # as much extra margin as still leaves a usable core
        eroded = ~_binary_dilate(~inter, k)
        if eroded.sum() >= 12:
            core = eroded
            break
    clear = ~_binary_dilate(union, m) if m > 0 else ~union
    return COLOURS[scene.colour], COLOURS[scene.background], core, clear


def nearest_colour(rgb) -> str:
    """Name of the vocabulary colour closest (Euclidean RGB) to ``rgb``."""
    rgb = np.asarray(rgb, dtype=np.float32)
    names = list(COLOURS)
    d = [float(np.sum((rgb - np.asarray(COLOURS[n], dtype=np.float32)) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def _drawn(prompt: str, arr: np.ndarray) -> np.ndarray:
    """Pixels nearer the caption's shape colour than its background colour."""
    scene = parse_caption(prompt)
    d_fg = np.sum((arr - np.asarray(COLOURS[scene.colour], np.float32)) ** 2, axis=-1)
    d_bg = np.sum((arr - np.asarray(COLOURS[scene.background], np.float32)) ** 2, axis=-1)
    return d_fg < d_bg


def shape_ious(prompt: str, image) -> dict[str, float]:
    """Which shape was drawn: for each of the three shapes at the caption's size and position, the IoU of the
    pixels nearer the shape colour than the background colour with that shape, the best over the jitter the
    training scenes have (the grid of :func:`expected_layout`), so a shape drawn a little off-centre or a little
    larger, as in training, still matches its own shape fully. A circle and a square of the same size overlap a
    lot (about 0.8 even when drawn perfectly), a triangle and either about 0.5-0.65: the caption's shape should
    match best, by a margin. (Masks at 2x supersampling: 225 of them take about 60 ms.)"""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    drawn = _drawn(prompt, arr)
    scene = parse_caption(prompt)
    out = {}
    for shape in SHAPES:
        best = 0.0
        for dx in np.linspace(-JITTER_POS, JITTER_POS, 5):
            for dy in np.linspace(-JITTER_POS, JITTER_POS, 5):
                for ds in (-JITTER_SIZE, 0.0, JITTER_SIZE):
                    mask = shape_mask(Scene(scene.colour, shape, scene.background, scene.size, scene.position,
                                            float(dx), float(dy), ds), arr.shape[0], supersample=2) > 0.5
                    best = max(best, float((drawn & mask).sum() / max(1, (drawn | mask).sum())))
        out[shape] = best
    return out


def judge_image(prompt: str, image) -> dict:
    """Compare a generated image with :func:`expected_layout`: nearest colours in core and clear areas."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    fg, bg, core, clear = expected_layout(prompt, size=arr.shape[0])
    scene = parse_caption(prompt)
    fg_mean = arr[core].mean(axis=0)
    bg_mean = arr[clear].mean(axis=0)
    fg_name, bg_name = nearest_colour(fg_mean), nearest_colour(bg_mean)
    # Shape quality: pixels closer to the shape colour than to the background colour, compared
    # (intersection over union) with the un-jittered shape of the caption.
    d_fg = np.sum((arr - np.asarray(fg, np.float32)) ** 2, axis=-1)
    d_bg = np.sum((arr - np.asarray(bg, np.float32)) ** 2, axis=-1)
    drawn = d_fg < d_bg
    nominal = shape_mask(scene, arr.shape[0]) > 0.5
    iou = float((drawn & nominal).sum() / max(1, (drawn | nominal).sum()))
    return {
        "prompt": prompt,
        "shape_colour": fg_name,
        "background_colour": bg_name,
        "shape_ok": fg_name == scene.colour,
        "iou": iou,
        "background_ok": bg_name == scene.background,
        "shape_mean": fg_mean.tolist(),
        "background_mean": bg_mean.tolist(),
    }
