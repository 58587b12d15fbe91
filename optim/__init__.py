"""The diffusion optimization lab's engine: compare a diffusers pipeline with and without optimizations.

No UI here (app.py is the UI); nothing in optim imports gradio.

    from optim.config import RunSpec
    from optim.presets import load_preset
    from optim.engine import compare

    comparison = compare(RunSpec(prompt="a red circle on a blue background"), load_preset("first-block-cache"))
    print(comparison.speedup, comparison.quality["psnr_db"])
"""

__version__ = "0.1.0"
