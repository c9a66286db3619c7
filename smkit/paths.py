"""Where things are.

REPO is this toolkit's checkout (the stand-in Dockerfiles, local_mode). PROJECT is the directory whose
images.toml, containers/ and train_scripts/ are built: the same checkout unless SMKIT_PROJECT names
another one (a team's own repository of training code, or a scratch copy in tests).
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = Path(os.environ.get("SMKIT_PROJECT") or REPO).resolve()
IMAGES_FILE = PROJECT / "images.toml"
BUILD_DIR = PROJECT / "build"  # build manifest (images.json); git-ignored
# Installed into derived images whose base runs the legacy sagemaker-containers toolkit (docstring there).
KEEP_FAILURE_MODULE = REPO / "containers" / "smkit_keep_failure.py"
