"""Where things are.

REPO is this toolkit's checkout (or, once installed with pip, the directory holding the smkit package).
PROJECT is the directory whose images.toml, scripts and sample data are built and run: the current
directory for the `smkit` command, this checkout for build.py and `python -m local_mode`, or whatever
SMKIT_PROJECT names (a team's own repository of training code, a scratch copy in tests).
CONTAINERS holds the toolkit's own build files: the Dockerfile template, the stand-in bases and the facts
about the real bases; in a checkout it is containers/, in an installed package smkit/_containers/.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = Path(os.environ.get("SMKIT_PROJECT") or REPO).resolve()
IMAGES_FILE = PROJECT / "images.toml"
BUILD_DIR = PROJECT / "build"  # build manifest (images.json); git-ignored

_CHECKOUT_CONTAINERS = REPO / "containers"
CONTAINERS = (_CHECKOUT_CONTAINERS if (_CHECKOUT_CONTAINERS / "Dockerfile").is_file()
              else Path(__file__).resolve().parent / "_containers")
TEMPLATE = CONTAINERS / "Dockerfile"  # the Dockerfile of every image that names none of its own
STANDIN_DIR = CONTAINERS / "standin"
REAL_BASES = STANDIN_DIR / "real_bases.toml"
# Installed into every derived image by the `smkit keep-failure` Dockerfile lines (docstrings there): the
# script's own failure reason kept on the legacy toolkit, and SageMaker's stop (SIGTERM) passed on to the script.
KEEP_FAILURE_MODULE = CONTAINERS / "smkit_keep_failure.py"
INIT_MODULE = CONTAINERS / "smkit_init.py"
IN_IMAGE_MODULES = (KEEP_FAILURE_MODULE, INIT_MODULE)  # what the build context of every image carries
