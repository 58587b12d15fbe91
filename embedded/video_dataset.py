"""Procedural "one coloured shape that moves on a plain background" clips, generated in code.

Every clip is ``NUM_FRAMES`` (9 = 4k + 1, what CogVideoX's 4x temporal compression needs) RGB frames
of 64x64 pixels: a single circle, square or triangle in one of the image model's six colours on a
background of another colour, that moves left, right, up or down, grows, shrinks or stays still.
Captions follow a fixed grammar so the text side stays tiny:

    a red circle moving right on a blue background
    a small green square growing on a black background
    a large yellow triangle staying still on a white background

Size words: "small"/"large" (no word = medium) for moving and still shapes; a growing shape always
starts small and a shrinking one always starts large, so "small ... growing" and "large ... shrinking"
are the same clips as without the word (both phrasings are used in training).

Some (colour, shape, motion) combinations are held out (:data:`HELD_OUT`): the training sampler
never draws them, whatever the background, so the evaluation can ask for unseen combinations.

Nothing is downloaded; everything is a function of a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from .dataset import (  # the image model's palette, shapes and caption grammar
    CAPTION_END,
    CAPTION_START,
    COLOURS,
    SHAPES,
    check_vocabulary,
    match_caption,
    nearest_colour,
    shape_polygon,
)

VIDEO_SIZE = 64
NUM_FRAMES = 9
FPS = 8  # what CogVideoX exports at; 9 frames = a little over one second

# motion key -> caption phrase
MOTIONS: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "growing": "growing",
    "shrinking": "shrinking",
    "still": "staying still",
}
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# size word -> half-extent of the shape as a fraction of the side ("" = medium). Medium is 24 of 64 pixels
# wide: three of the transformer's 8-pixel tokens (smaller shapes, 18 pixels, were drawn as blobs).
SIZES: dict[str, float] = {"small": 0.13, "": 0.19, "large": 0.25}
GROW_RANGE = (0.10, 0.27)  # half-extent at the first / last frame of a growing clip (reversed: shrinking)
TRAVEL = 0.30  # distance a moving shape's centre travels over the clip, fraction of the side
JITTER_TRAVEL = 0.04
JITTER_ALONG = 0.04  # random offset of the path along its direction
JITTER_ACROSS = 0.10  # random offset of the path across its direction
JITTER_STILL = 0.12  # random offset of a still shape's centre
JITTER_GROW = 0.06  # random offset of a growing/shrinking shape's centre
JITTER_SIZE = 0.08  # relative change of size
BORDER = 0.04  # keep this fraction of the side between the shape and the border
PLAIN_FRACTION = 0.5  # share of captions without a size word

# (colour, shape, motion) combinations never drawn for training, with any background. Every colour,
# shape and motion still appears in training in other combinations.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("white", "triangle", "left"),
    ("green", "square", "right"),
    ("black", "circle", "right"),
    ("blue", "triangle", "up"),
    ("yellow", "square", "up"),
    ("yellow", "circle", "down"),
    ("red", "square", "down"),
    ("white", "square", "growing"),
    ("blue", "circle", "growing"),
    ("black", "triangle", "shrinking"),
    ("green", "circle", "shrinking"),
    ("red", "triangle", "still"),
    ("blue", "square", "still"),
)
_HELD_OUT = frozenset(HELD_OUT)


@dataclass(frozen=True)
class Clip:
    colour: str
    shape: str
    background: str
    motion: str  # a key of MOTIONS
    size: str = ""  # "", "small" or "large": the caption's size word (redundant for growing/shrinking)
    cx: float = 0.5  # centre at the middle of the clip, fraction of the side
    cy: float = 0.5
    travel: float = TRAVEL  # moving clips: distance covered by the centre
    ds: float = 0.0  # relative size jitter

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape, self.motion) in _HELD_OUT


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    return (colour, shape, motion) in _HELD_OUT


def track(clip: Clip, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Centre and half-extent of the shape in every frame: (num_frames, 3) = (cx, cy, r), fractions of the side."""
    u = np.linspace(-0.5, 0.5, num_frames)  # clip time, centred
    out = np.empty((num_frames, 3))
    if clip.motion in DIRECTIONS:
        ex, ey = DIRECTIONS[clip.motion]
        out[:, 0] = clip.cx + ex * clip.travel * u
        out[:, 1] = clip.cy + ey * clip.travel * u
        out[:, 2] = SIZES[clip.size] * (1 + clip.ds)
    elif clip.motion in ("growing", "shrinking"):
        r0, r1 = GROW_RANGE if clip.motion == "growing" else GROW_RANGE[::-1]
        out[:, 0], out[:, 1] = clip.cx, clip.cy
        out[:, 2] = np.exp(np.log(r0) + (np.log(r1) - np.log(r0)) * (u + 0.5)) * (1 + clip.ds)  # steady zoom
    elif clip.motion == "still":
        out[:, 0], out[:, 1] = clip.cx, clip.cy
        out[:, 2] = SIZES[clip.size] * (1 + clip.ds)
    else:
        raise ValueError(clip.motion)
    return out


def draw_mask(shape: str, cx: float, cy: float, r: float, size: int = VIDEO_SIZE, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape (centre/half-extent in pixels), (size, size) float32."""
    s = supersample
    img = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(img)
    cx, cy, r = cx * s, cy * s, r * s
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=255)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def render_clip(clip: Clip, size: int = VIDEO_SIZE, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """The clip as uint8 frames, shape (num_frames, size, size, 3)."""
    fg = np.asarray(COLOURS[clip.colour], dtype=np.float32)
    bg = np.asarray(COLOURS[clip.background], dtype=np.float32)
    out = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for f, (cx, cy, r) in enumerate(track(clip, num_frames)):
        cover = draw_mask(clip.shape, cx * size, cy * size, r * size, size)[..., None]
        out[f] = np.clip(np.rint(cover * fg + (1.0 - cover) * bg), 0, 255).astype(np.uint8)
    return out


def caption_clip(clip: Clip) -> str:
    words = ["a"]
    if clip.size:
        words.append(clip.size)
    words += [clip.colour, clip.shape, MOTIONS[clip.motion], "on", "a", clip.background, "background"]
    return " ".join(words)


_PHRASE_TO_MOTION = {v: k for k, v in MOTIONS.items()}
_CAPTION_RE = re.compile(
    CAPTION_START
    + r"\s+(?P<motion>moving left|moving right|moving up|moving down|growing|shrinking|staying still)"
    + CAPTION_END
)


def parse_caption(caption: str) -> Clip:
    """Inverse of :func:`caption_clip` (without jitter). Raises ValueError outside the grammar."""
    m, size = match_caption(_CAPTION_RE, caption)
    motion = _PHRASE_TO_MOTION[m.group("motion")]
    clip = Clip(colour=m.group("colour"), shape=m.group("shape"), background=m.group("background"),
                motion=motion, size=size)
    check_vocabulary(clip.colour, clip.shape, clip.background, caption)
    if clip.colour == clip.background:
        raise ValueError(f"shape and background have the same colour in {caption!r}")
    if (motion == "growing" and size == "large") or (motion == "shrinking" and size == "small"):
        raise ValueError(f"a growing shape starts small and a shrinking one large: {caption!r}")
    return clip


def _size_words(motion: str) -> list[str]:
    if motion == "growing":
        return ["", "small"]
    if motion == "shrinking":
        return ["", "large"]
    return list(SIZES)


def sample_clip(rng: np.random.Generator, allow_held_out: bool = False, jitter: bool = True) -> Clip:
    """Draw one clip (never a held-out combination unless ``allow_held_out``)."""
    names = list(COLOURS)
    while True:
        colour = names[rng.integers(len(names))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        motion = list(MOTIONS)[rng.integers(len(MOTIONS))]
        if allow_held_out or not is_held_out(colour, shape, motion):
            break
    others = [c for c in names if c != colour]
    background = others[rng.integers(len(others))]
    if rng.random() < PLAIN_FRACTION:
        size = ""
    else:
        words = [w for w in _size_words(motion) if w]
        size = words[rng.integers(len(words))]
    j = (lambda a: float(rng.uniform(-a, a))) if jitter else (lambda a: (rng.uniform(-a, a), 0.0)[1])
    ds = j(JITTER_SIZE)
    cx = cy = 0.5
    travel = TRAVEL
    if motion in DIRECTIONS:
        travel = TRAVEL + j(JITTER_TRAVEL)
        along, across = j(JITTER_ALONG), j(JITTER_ACROSS)
        ex, ey = DIRECTIONS[motion]
        cx, cy = 0.5 + ex * along + ey * across, 0.5 + ey * along + ex * across
    elif motion == "still":
        cx, cy = 0.5 + j(JITTER_STILL), 0.5 + j(JITTER_STILL)
    else:
        cx, cy = 0.5 + j(JITTER_GROW), 0.5 + j(JITTER_GROW)
    clip = Clip(colour, shape, background, motion, size, float(cx), float(cy), float(travel), float(ds))
    return _keep_inside(clip)


def _keep_inside(clip: Clip) -> Clip:
    """Shift the centre so the shape stays ``BORDER`` away from the edges in every frame."""
    t = track(clip)
    lo = (t[:, :2] - t[:, 2:3]).min(axis=0)
    hi = (t[:, :2] + t[:, 2:3]).max(axis=0)
    shift = np.maximum(BORDER - lo, 0) - np.maximum(hi - (1 - BORDER), 0)
    return Clip(clip.colour, clip.shape, clip.background, clip.motion, clip.size,
                float(clip.cx + shift[0]), float(clip.cy + shift[1]), clip.travel, clip.ds)


def sample_dataset(n: int, seed: int, size: int = VIDEO_SIZE, num_frames: int = NUM_FRAMES,
                   allow_held_out: bool = False) -> tuple[np.ndarray, list[str]]:
    """``n`` clips (uint8, n x frames x size x size x 3) and their captions, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    clips = np.empty((n, num_frames, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        clip = sample_clip(rng, allow_held_out=allow_held_out)
        clips[i] = render_clip(clip, size, num_frames)
        captions.append(caption_clip(clip))
    return clips, captions


def all_captions(held_out: bool | None = None) -> list[str]:
    """Every caption of the grammar (sorted). ``held_out``: True = only held-out combinations,
    False = only trainable ones, None = all."""
    out = []
    for colour in COLOURS:
        for background in COLOURS:
            if background == colour:
                continue
            for shape in SHAPES:
                for motion in MOTIONS:
                    if held_out is not None and is_held_out(colour, shape, motion) != held_out:
                        continue
                    for size in _size_words(motion):
                        out.append(caption_clip(Clip(colour, shape, background, motion, size)))
    return sorted(out)


def held_out_prompts(per_combination: int = 2, seed: int = 0) -> list[str]:
    """Plain (no size word) prompts for every held-out combination, ``per_combination`` backgrounds each,
    chosen deterministically so that every colour is a background about equally often."""
    rng = np.random.default_rng(seed)
    out = []
    for colour, shape, motion in HELD_OUT:
        others = [c for c in COLOURS if c != colour]
        for k in rng.choice(len(others), size=per_combination, replace=False):
            out.append(caption_clip(Clip(colour, shape, others[k], motion)))
    return out


__all__ = [
    "COLOURS", "SHAPES", "MOTIONS", "SIZES", "HELD_OUT", "VIDEO_SIZE", "NUM_FRAMES", "FPS", "Clip",
    "track", "draw_mask", "render_clip", "caption_clip", "parse_caption", "sample_clip", "sample_dataset",
    "all_captions", "held_out_prompts", "is_held_out", "nearest_colour",
]
