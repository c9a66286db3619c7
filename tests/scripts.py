"""The reference training scripts' modules, imported as the image has them: every module of a script
folder and sm_contract side by side in /opt/ml/code, imported by their top-level names.

Both folders have a `train.py`; `script_module` imports the one asked for under the name `train` and
hands it over, so the XGBoost and the PyTorch tests can hold their own in one pytest process. The other
module names are distinct across the folders.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "train_scripts"


def script_module(framework: str, name: str) -> ModuleType:
    """Module `name` of train_scripts/<framework> (or sm_contract), imported by its top-level name."""
    for folder in (SCRIPTS / "common", SCRIPTS / framework):
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.path.insert(0, str(folder))
    if name == "train":
        sys.modules.pop("train", None)  # the other framework's entry point
    return importlib.import_module(name)
