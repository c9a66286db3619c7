"""local_mode/contract.py without Docker: the encodings and names of each SDK dialect, and packaging
as SDK local mode packages (the end-to-end proof is tests/test_parity.py)."""

from __future__ import annotations

import json
import re
import tarfile

from local_mode import Channel, JobSpec, contract


def test_hyperparameters_are_encoded_as_each_sdk_encodes_them():
    hps = {"n": 3, "eta": 0.1, "flag": True, "sizes": [64, 32], "name": "a b", "nested": {"k": 1}, "none": None}
    assert contract.encode_hyperparameters(hps, "v2") == {
        "n": "3", "eta": "0.1", "flag": "True", "sizes": "[64, 32]", "name": "a b", "nested": "{'k': 1}", "none": "None"}
    assert contract.encode_hyperparameters(hps, "v3") == {
        "n": "3", "eta": "0.1", "flag": "true", "sizes": "[64, 32]", "name": "a b", "nested": '{"k": 1}', "none": "null"}


def test_host_names_and_resource_config_follow_the_dialect():
    v2 = contract.host_names(3, "v2")
    assert all(re.fullmatch(r"algo-\d-[a-z0-9]{5}", h) for h in v2) and len({h[-5:] for h in v2}) == 1
    assert [h[:6] for h in v2] == ["algo-1", "algo-2", "algo-3"]
    assert contract.host_names(2, "v3") == ["algo-1", "algo-2"]
    assert contract.resource_config("algo-1", ["algo-1"], "local", "v3") == {
        "current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "ethwe", "current_instance_type": "local_cpu"}
    assert contract.resource_config("h", ["h"], "local_gpu", "v2")["current_instance_type"] == "local_gpu"


def test_config_files_and_environment(tmp_path):
    spec = JobSpec(image="x", job_name="job-1", hyperparameters={"a": 1}, environment={"MINE": "1", "AWS_REGION": "eu-west-1"},
                   channels=[Channel("train", "/d", content_type="text/csv"), Channel("val", "/v")])
    contract.write_config(tmp_path, host="algo-1", hosts=["algo-1"], spec=spec, dialect="v3",
                          checkpoints=contract.checkpoint_config("/opt/ml/checkpoints", None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpointconfig.json", "hyperparameters.json",
                                                         "inputdataconfig.json", "resourceconfig.json"]
    assert json.loads((tmp_path / "inputdataconfig.json").read_text()) == {
        "train": {"TrainingInputMode": "File", "ContentType": "text/csv"}, "val": {"TrainingInputMode": "File"}}
    assert json.loads((tmp_path / "checkpointconfig.json").read_text()) == {"LocalPath": "/opt/ml/checkpoints"}
    # The job's own variables win; v3 sets no region of its own.
    assert contract.environment(spec, "us-east-1", "v2") == {"TRAINING_JOB_NAME": "job-1", "AWS_REGION": "eu-west-1", "MINE": "1"}
    assert contract.environment(JobSpec(image="x", channels=[], job_name="j"), "us-east-1", "v3") == {"TRAINING_JOB_NAME": "j"}


def test_packaging_merges_the_hosts_outputs_in_host_order(tmp_path):
    model, out1, out2 = tmp_path / "model", tmp_path / "h1", tmp_path / "h2"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"w")
    (model / "sub" / "a.txt").write_text("a")
    for out, text in ((out1, "first"), (out2, "second")):
        (out / "data").mkdir(parents=True)
        (out / "data" / "same.txt").write_text(text)
    (out1 / "data" / "only-1.txt").write_text("1")
    (out2 / "failure").write_text("reason")
    model_tar, output_tar = contract.package(model, [out1, out2, tmp_path / "missing"], tmp_path / "dest", tmp_path / "scratch")
    with tarfile.open(model_tar) as archive:
        assert sorted(archive.getnames()) == ["sub", "sub/a.txt", "weights.bin"]
    with tarfile.open(output_tar) as archive:
        assert sorted(archive.getnames()) == ["data", "data/only-1.txt", "data/same.txt", "failure"]
        assert archive.extractfile("data/same.txt").read() == b"second"  # a later host's file replaces an earlier one's
    assert not (tmp_path / "scratch").exists()
