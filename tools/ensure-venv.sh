#!/usr/bin/env bash
# ensure-venv.sh LOCKFILE LINK: a virtualenv with exactly the pins of LOCKFILE, linked at LINK.
# The environment itself lives in a cache keyed by the lock file's hash and the Python version, so a
# fresh clone on the same machine reuses it, and a changed lock file makes a new one. Several checkouts
# may ask at once (parallel CI jobs, worktrees): one builds under a lock, into a scratch directory that is
# renamed into place only when complete; the others wait and reuse it.
set -euo pipefail
lock=$1
link=$2
python=${PYTHON:-python3}

pyver=$($python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$( (cat "$lock"; echo "$pyver") | sha256sum | cut -c1-16)
cache=${SMKIT_CACHE:-$HOME/.cache/smkit}/venvs/$(basename "$link")-$key
mkdir -p "$(dirname "$cache")"

if [ ! -f "$cache/.complete" ]; then
  exec 9>"$cache.lock"
  flock 9
  if [ ! -f "$cache/.complete" ]; then
    echo "==> creating virtualenv $link from $lock (Python $pyver)"
    # venvs are not relocatable (scripts hold their path): build at the final path, marked complete last.
    rm -rf "$cache"
    $python -m venv "$cache"
    "$cache/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$cache/bin/python" -m pip install -q --disable-pip-version-check -r "$lock"
    touch "$cache/.complete"
  fi
  flock -u 9
fi
if [ "$(readlink "$link" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$link"
  ln -s "$cache" "$link"
fi
