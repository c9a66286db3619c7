#!/usr/bin/env python3
"""Build, tag and push the training images listed in images.toml: a thin entry point of `smkit` (smkit/cli.py).

    python build.py init NAME --framework xgboost  # a new image: script, requirements, sample data, images.toml entry
    python build.py build                       # every image, on the prebuilt SageMaker base of your region
    python build.py build --base local          # on the offline stand-in bases (no AWS needed)
    python build.py push                        # to ECR in your account (repository created if missing)
    python build.py push --registry HOST:PORT/NS   # to any OCI registry (credentials: docker login)
    python build.py doctor                      # check engine, compose, AWS, registry; print fixes
    python build.py list                        # what each image resolves to
    python build.py check IMAGE                 # does any training image honour the SageMaker contract?

`make build push` wraps it. Every command takes --help; every command that changes something (build, push,
bases, init) takes --dry-run; doctor, list and check only read. The project is this checkout unless SMKIT_PROJECT
names another directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smkit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python build.py"))
