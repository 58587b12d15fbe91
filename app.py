"""The diffusion optimization lab: a Gradio app that runs a diffusers pipeline as a baseline and with the
optimizations you pick, side by side, and shows what they bought (latency, per-step time, peak memory) and what
they cost (pixel differences, PSNR/SSIM, a diff heatmap).

    python app.py        # serves on 0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Hugging Face Spaces runs this file. The UI is the `lab` package (one module per screen area, see lab/__init__.py),
the engine the `optim` package; docs/ARCHITECTURE.md shows how they fit.
"""

try:  # On ZeroGPU `spaces` must be imported before torch; everywhere else it is optional.
    import spaces  # noqa: F401
except ImportError:  # pragma: no cover - only on Hugging Face Spaces
    spaces = None

from lab.server import main

if __name__ == "__main__":
    main()
