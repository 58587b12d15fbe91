"""Videos as files: MP4 for watching, and the frames losslessly as one PNG contact sheet.

A video pipeline's output is frames (F x H x W x 3 uint8, `optim.generation.to_uint8`). Reports keep them twice:

* `<side>.mp4`: H.264 (yuv420p, what browsers play), written with the ffmpeg that the `imageio-ffmpeg` wheel
  ships (no system ffmpeg, no network). H.264 is lossy, so it is for watching, never for measuring.
* `<side>.png`: every frame, lossless, in a grid read left to right, top to bottom (`frame_sheet`); `split_sheet`
  gives the exact frames back, so a report folder holds everything the metrics saw.

    >>> frames = np.zeros((9, 32, 32, 3), np.uint8)
    >>> frame_sheet(frames).shape                      # 3 x 3 frames
    (96, 96, 3)
    >>> write_mp4(frames, Path("clip.mp4"), fps=8)     # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# The frame rate a video is written at when neither the run nor the model gives one (CogVideoX's).
DEFAULT_FPS = 8
# H.264 quality: 0 is lossless (which few browsers decode), 18 is visually lossless; 51 worst.
H264_CRF = 18


def sheet_layout(count: int) -> tuple[int, int]:
    """(rows, columns) of the contact sheet of `count` frames: as square as possible, columns first."""
    if count < 1:
        raise ValueError("a video has at least one frame")
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def frame_sheet(frames: np.ndarray) -> np.ndarray:
    """All frames (F, H, W, C) tiled into one image, left to right then top to bottom; unused cells are black."""
    count, height, width = frames.shape[:3]
    rows, columns = sheet_layout(count)
    sheet = np.zeros((rows * height, columns * width, *frames.shape[3:]), dtype=frames.dtype)
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = frame
    return sheet


def split_sheet(sheet: np.ndarray, count: int) -> np.ndarray:
    """The frames of a `frame_sheet` of `count` frames, exactly."""
    rows, columns = sheet_layout(count)
    height, width = sheet.shape[0] // rows, sheet.shape[1] // columns
    if (height * rows, width * columns) != sheet.shape[:2]:
        raise ValueError(f"a sheet of {count} frames is {rows}x{columns} frames; {sheet.shape[:2]} does not divide")
    return np.stack([sheet[(i // columns) * height:(i // columns + 1) * height,
                           (i % columns) * width:(i % columns + 1) * width] for i in range(count)])


def write_frames_png(frames: np.ndarray, path: Path) -> None:
    """The frames, losslessly, as one PNG contact sheet."""
    from PIL import Image

    Image.fromarray(frame_sheet(frames)).save(path, format="PNG")


def read_frames_png(path: Path, count: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return split_sheet(np.asarray(image.convert("RGB")), count)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p halves the colour resolution, so H.264 needs even sides: repeat the last row or column."""
    height, width = frames.shape[1:3]
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames


def write_mp4(frames: np.ndarray, path: Path, *, fps: int | float = DEFAULT_FPS) -> None:
    """Frames (F, H, W, 3 uint8) as an H.264 MP4 browsers play (yuv420p, faststart), with imageio-ffmpeg's
    bundled ffmpeg."""
    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 takes (frames, H, W, 3) uint8, not {frames.shape} {frames.dtype}")
    frames = np.ascontiguousarray(_even(frames))
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=float(fps), codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=2, ffmpeg_log_level="error",
        output_params=["-crf", str(H264_CRF), "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(frame.tobytes())
    finally:
        writer.close()


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """(frames, fps) of a video file (for tests and tools; the frames are H.264's, not the originals)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    return np.stack(frames), float(meta["fps"])
