"""What in a derived image breaks on the real prebuilt base, checked against the base it was built on.

- WORKDIR, USER and ENTRYPOINT must stay the base's: the legacy XGBoost toolkit and the PyTorch DLC's
  hostname shim assume root in `/` with their own entry point.
- /opt/ml/code must hold no setup.py, setup.cfg, pyproject.toml or requirements.txt unless meant: the
  XGBoost image's legacy toolkit `pip install`s /opt/ml/code at every job start (a setup.py of ours would
  replace the one it generates) and installs a requirements.txt from the network, every job.
- /opt/ml/code must stay writable by the image's user: that toolkit writes setup.py and build files there.

config_differences() reads only image metadata (cheap: `build` warns with it); code_dir_problems() runs
one short container with its network disabled.
"""

from __future__ import annotations

import json

from smkit import engine

# Files in /opt/ml/code that the legacy toolkit's job-start `pip install .` would act on.
PACKAGING_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "requirements.txt")
CONFIG_KEYS = {"WorkingDir": "WORKDIR", "User": "USER", "Entrypoint": "ENTRYPOINT"}


def _config(image: str) -> dict:
    return engine.client().images.get(image).attrs.get("Config") or {}


def config_differences(image: str, base: str) -> list[str]:
    """One sentence per WORKDIR/USER/ENTRYPOINT the derived image changed from its base."""
    mine, theirs = _config(image), _config(base)
    problems = []
    for key, word in CONFIG_KEYS.items():
        if (mine.get(key) or None) != (theirs.get(key) or None):
            problems.append(
                f"{word} is {mine.get(key) or 'unset'!r} but the base's is {theirs.get(key) or 'unset'!r}; "
                f"remove the {word} line from the Dockerfile (the real base's toolkit expects its own)."
            )
    return problems


_PROBE = """
import json, os
code = "/opt/ml/code"
names = sorted(os.listdir(code)) if os.path.isdir(code) else []
print(json.dumps({"exists": os.path.isdir(code), "writable": os.access(code, os.W_OK), "names": names}))
"""


def code_dir_problems(image: str, meant: tuple[str, ...] = ()) -> list[str]:
    """One sentence per problem with /opt/ml/code in `image` (packaging files not in `meant`, not writable)."""
    config = _config(image)
    output = engine.client().containers.run(
        image, ["-c", _PROBE], entrypoint=["python3"], user=config.get("User") or "", remove=True, network_disabled=True,
    )
    state = json.loads(output.decode().strip().splitlines()[-1])
    problems = []
    if not state["exists"]:
        return ["/opt/ml/code does not exist; COPY the training script there."]
    for name in PACKAGING_FILES:
        if name in state["names"] and name not in meant:
            problems.append(
                f"/opt/ml/code/{name} is in the image; the XGBoost base's toolkit pip-installs /opt/ml/code at every "
                f"job start and would act on it: bake dependencies at build time and keep {name} out of the scripts."
            )
    if not state["writable"]:
        problems.append("/opt/ml/code is not writable by the image's user; the XGBoost base's toolkit writes "
                        "setup.py there at job start: do not chmod or chown it read-only.")
    return problems
