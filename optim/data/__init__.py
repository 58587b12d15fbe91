"""The lab's data, shipped inside the package so an installed copy finds it from anywhere:

* `presets/`: the shipped presets (one strict JSON file each) and `schema.json`, their JSON Schema;
* `assets/`: the embedded models (diffusers folders loaded with `from_pretrained`).

In a checkout, `presets/` and `assets/` at the top level point here.

    >>> (DATA_DIR / "presets" / "baseline.json").is_file()
    True
"""

from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(str(files(__name__)))
PRESETS_DIR = DATA_DIR / "presets"
ASSETS_DIR = DATA_DIR / "assets"
