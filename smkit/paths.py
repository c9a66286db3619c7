"""Where things are: the repository this toolkit runs from, and what it writes there."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / "build"  # build manifest (images.json) and other generated files; git-ignored
IMAGES_FILE = REPO / "images.toml"
