"""The pieces of the inner loop that need no Docker: the per-run code copy and its hash (smkit/code.py),
the debounced change detection of `run --watch` (local_mode/changes.py) and the metric comparison it prints
(local_mode/compare.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from local_mode import compare
from local_mode.changes import CodeChanges
from smkit import code
from smkit.images_toml import ImageSpec



def spec_for(scripts=("train_scripts/common", "train_scripts/xgboost")) -> ImageSpec:
    return ImageSpec(name="xgboost", framework="xgboost", version="3.0-5", dockerfile="containers/xgboost/Dockerfile",
                     scripts=tuple(scripts), requirements="containers/xgboost/requirements.txt", program="train.py",
                     repository="smkit-xgboost")


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "train_scripts" / "common").mkdir(parents=True)
    (root / "train_scripts" / "xgboost" / "lib").mkdir(parents=True)
    (root / "train_scripts" / "common" / "sm_contract.py").write_text("HELPER = 1\n")
    (root / "train_scripts" / "common" / "shared.py").write_text("FROM = 'common'\n")
    (root / "train_scripts" / "xgboost" / "shared.py").write_text("FROM = 'xgboost'\n")  # replaces common's
    (root / "train_scripts" / "xgboost" / "train.py").write_text("print('v1')\n")
    (root / "train_scripts" / "xgboost" / "lib" / "util.py").write_text("X = 1\n")
    (root / "train_scripts" / "xgboost" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "train_scripts" / "xgboost" / "run.sh", 0o755)
    (root / "train_scripts" / "xgboost" / ".env").write_text("SECRET=1\n")  # never baked, never mounted
    (root / "train_scripts" / "xgboost" / "__pycache__").mkdir()
    (root / "train_scripts" / "xgboost" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_the_copy_is_laid_out_like_the_images_code_directory(tree, tmp_path):
    before = sorted((p, p.read_bytes()) for p in tree.rglob("*") if p.is_file())
    copy = code.assemble(spec_for(), tmp_path / "code", root=tree)
    files = sorted(str(p.relative_to(copy.path)) for p in copy.path.rglob("*") if p.is_file())
    assert files == list(copy.files) == ["lib/util.py", "run.sh", "shared.py", "sm_contract.py", "train.py"]
    assert (copy.path / "shared.py").read_text() == "FROM = 'xgboost'\n"  # the later directory wins, as COPY does
    assert os.access(copy.path / "run.sh", os.X_OK) and not os.access(copy.path / "train.py", os.X_OK)
    assert copy.digest == code.layout_digest(spec_for(), tree)
    # The working tree is read, never written.
    assert sorted((p, p.read_bytes()) for p in tree.rglob("*") if p.is_file()) == before


def test_the_copy_must_be_fresh(tree, tmp_path):
    (tmp_path / "code").mkdir()
    with pytest.raises(FileExistsError):
        code.assemble(spec_for(), tmp_path / "code", root=tree)


def test_a_requirements_file_among_the_scripts_is_never_copied(tree, tmp_path):
    (tree / "train_scripts" / "xgboost" / "requirements.txt").write_text("pandas\n")
    spec = ImageSpec(**{**spec_for().__dict__, "requirements": "train_scripts/xgboost/requirements.txt"})
    copy = code.assemble(spec, tmp_path / "code", root=tree)
    assert "requirements.txt" not in copy.files and not (copy.path / "requirements.txt").exists()


def test_layout_hash_follows_content_not_mtime(tree):
    spec = spec_for()
    first = code.layout_digest(spec, tree)
    script = tree / "train_scripts" / "xgboost" / "train.py"
    os.utime(script, ns=(1, 1))
    assert code.layout_digest(spec, tree) == first
    (tree / "train_scripts" / "xgboost" / "__pycache__" / "x.pyc").write_bytes(b"1")
    assert code.layout_digest(spec, tree) == first  # never part of the image
    os.chmod(script, 0o755)
    assert code.layout_digest(spec, tree) != first  # the mode lands in /opt/ml/code too
    os.chmod(script, 0o644)
    script.write_text("print('v2')\n")
    assert code.layout_digest(spec, tree) != first


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_change_counts_once_it_has_settled_and_only_if_the_content_differs(tree):
    clock = Clock()
    changes = CodeChanges(spec_for(), root=tree, quiet=0.3, clock=clock)
    script = tree / "train_scripts" / "xgboost" / "train.py"
    assert changes.poll() is None
    os.utime(script, ns=(5, 5))  # a touch: the files moved, the code did not
    assert changes.poll() is None
    clock.now += 0.5
    assert changes.poll() is None

    script.write_text("print('v2')\n")  # an editor's save, in two writes
    assert changes.poll() is None
    clock.now += 0.2
    (tree / "train_scripts" / "xgboost" / "lib" / "util.py").write_text("X = 2\n")
    assert changes.poll() is None  # moved again: the quiet period starts over
    clock.now += 0.2
    assert changes.poll() is None
    clock.now += 0.2
    new = changes.poll()
    assert new == code.layout_digest(spec_for(), tree)
    assert changes.poll() is None  # reported once

    script.write_text("print('v3')\n")
    changes.poll()
    script.write_text("print('v2')\n")  # undone before it settled: the code is the last run's
    os.utime(script, ns=(9, 9))
    changes.poll()
    clock.now += 1
    assert changes.poll() is None


def test_a_new_file_counts_as_a_change(tree):
    clock = Clock()
    changes = CodeChanges(spec_for(), root=tree, quiet=0.3, clock=clock)
    (tree / "train_scripts" / "common" / "extra.py").write_text("Y = 1\n")
    changes.poll()
    clock.now += 1
    assert changes.poll() is not None


def test_metric_changes_are_one_line_each_with_the_delta():
    assert compare.lines(None, {"b": 2.0, "a": 1.0}) == ["a  1", "b  2"]
    lines = compare.lines({"validation:auc": 0.9, "train:auc": 0.95, "gone": 1.0},
                          {"validation:auc": 0.925, "train:auc": 0.95, "new": 3.0})
    assert lines == ["gone  1 -> —  (gone)", "new  — -> 3  (new)", "train:auc  0.95 -> 0.95  (unchanged)",
                     "validation:auc  0.9 -> 0.925  (+0.025)"]
    assert compare.changes({"x": 2.0}, {"x": 1.5})[0].delta == -0.5
