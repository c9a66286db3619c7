"""build/images.json: what was built and pushed, for people, local_mode/ and CI to read.

One entry per image name, replaced by each build and completed by each push. Never holds a credential.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from smkit.errors import ConfigError
from smkit.paths import BUILD_DIR

MANIFEST = BUILD_DIR / "images.json"
SCHEMA = 1


def load(path: Path = MANIFEST) -> dict[str, Any]:
    if not path.exists():
        return {"schema": SCHEMA, "images": {}}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON.", f"delete it and run `make build` again") from None
    data.setdefault("images", {})
    return data


def entry(name: str, path: Path = MANIFEST) -> dict[str, Any]:
    images = load(path)["images"]
    if name not in images:
        raise ConfigError(
            f"{path} has no image named {name!r}" + (f" (it has {', '.join(images)})" if images else "") + ".",
            f"build it first: `make build IMAGE={name}` (or `python build.py build --image {name} --base local`)",
        )
    return images[name]


def update(name: str, fields: dict[str, Any], replace: bool = False, path: Path = MANIFEST) -> dict[str, Any]:
    """Merge `fields` into the entry of `name` (or replace it) and write the file atomically."""
    data = load(path)
    current = {} if replace else data["images"].get(name, {})
    current.update(fields)
    data["images"][name] = current
    data["schema"] = SCHEMA
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".images.", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return current
