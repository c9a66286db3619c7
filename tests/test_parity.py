"""The direct backend is the SageMaker contract as SDK local mode writes it: the same job through SDK v2 and
v3 local mode (one and two instances) and through `--backend direct` with the same SDK's dialect, compared
by what the container saw (tests/fixtures/probe records its config files, argv, environment, mounts and
PID 1's command) and by the contents of model.tar.gz and output.tar.gz.

What may legitimately differ is normalised explicitly below, each with the reason (docs/local_mode.md,
"How direct differs from SDK local mode"); everything else must be equal.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path

import pytest

from local_mode import Channel, JobSpec, run

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SDK3_PYTHON = str(REPO / ".venv-sdk3" / "bin" / "python")
SAMPLE = REPO / "local_mode" / "sample_data" / "xgboost"
# Every kind of value the two SDKs encode differently (v2: str(v); v3: json.dumps unless a string).
HYPERPARAMETERS = {"num_round": 3, "eta": 0.1, "flag": True, "sizes": [64, 32], "name": "a b", "nested": {"k": 1}}
PLACEHOLDER = "local-mode-placeholder"


@pytest.fixture(scope="module")
def probe_image(docker_client, standin_xgboost) -> str:
    """tests/fixtures/probe on the XGBoost stand-in (image id)."""
    from smkit import builder
    from smkit.context import BuildContext

    ctx = BuildContext(Path(__file__).parent / "fixtures" / "probe")
    ctx.add(".")
    outcome = builder.build(ctx, dockerfile="Dockerfile", tag="smkit-test/probe:latest",
                            buildargs={"BASE_IMAGE": standin_xgboost}, title="probe")
    return outcome.image_id


def probe_job(image: str, sdk: str, hosts: int) -> JobSpec:
    return JobSpec(image=image, sdk=sdk, instance_count=hosts, hyperparameters=dict(HYPERPARAMETERS),
                   environment={"MY_SETTING": "on"},
                   channels=[Channel("train", str(SAMPLE / "train"), content_type="text/csv"),
                             Channel("validation", str(SAMPLE / "validation"))])


def tar_contents(path: str) -> dict[str, bytes | None]:
    """member name -> bytes (None for a directory)."""
    with tarfile.open(path) as archive:
        return {m.name: (archive.extractfile(m).read() if m.isfile() else None) for m in archive.getmembers()}


def records(result) -> list[dict]:
    """The probe records of every host, host names and the job name replaced by placeholders."""
    assert result.ok, f"{result.status}: {result.error} {result.failure_reason}\n{result.log()[-3000:]}"
    output = tar_contents(result.output_artifact)
    raw = [json.loads(output[name]) for name in sorted(n for n in output if re.fullmatch(r"data/probe-\d+\.json", n))]
    hosts = raw[0]["config"]["resourceconfig.json"]["hosts"]
    job_name = raw[0]["environ"]["TRAINING_JOB_NAME"]
    text = json.dumps(raw)
    for i, host in enumerate(sorted(hosts, key=len, reverse=True)):
        text = text.replace(host, f"<host {sorted(hosts).index(host) + 1}>")
    return json.loads(text.replace(job_name, "<job name>"))


def known_differences(sdk_record: dict, direct_record: dict, sdk: str, hosts: int) -> None:
    """Assert each documented difference, then remove it from both records."""
    sdk_env, direct_env = sdk_record["environ"], direct_record["environ"]
    # 1. The container's own host name: compose leaves Docker's default (the container id); direct sets
    #    the SageMaker host name, as the cloud does (and as a network-less container needs).
    assert re.fullmatch(r"[0-9a-f]{12}", sdk_record["hostname"]) and sdk_env["HOSTNAME"] == sdk_record["hostname"]
    assert re.fullmatch(r"<host \d>", direct_record["hostname"]) and direct_env["HOSTNAME"] == direct_record["hostname"]
    for record in (sdk_record, direct_record):
        del record["hostname"], record["environ"]["HOSTNAME"]
    # 2. SDK v2 copies its session's AWS credentials into the containers (local_mode's placeholders) and
    #    names the S3 endpoint; direct hands no credentials to a container.
    if sdk == "v2":
        assert sdk_env.pop("AWS_ACCESS_KEY_ID") == sdk_env.pop("AWS_SECRET_ACCESS_KEY") == PLACEHOLDER
        assert sdk_env.pop("AWS_ENDPOINT_URL_S3").startswith("https://s3.")
    assert not any(k in direct_env for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    # 3. SDK v2's compose file asks for a TTY (tty: true): stdout is a terminal and TERM is set there.
    if sdk == "v2":
        assert sdk_record["stdout_isatty"] is True and sdk_env.pop("TERM") == "xterm"
    else:
        assert sdk_record["stdout_isatty"] is False and "TERM" not in sdk_env
    assert direct_record["stdout_isatty"] is False and "TERM" not in direct_env
    for record in (sdk_record, direct_record):
        del record["stdout_isatty"]
    # 4. Channels: the SDKs mount the user's data read-write; direct mounts it read-only.
    for channel in ("train", "validation"):
        target = f"/opt/ml/input/data/{channel}"
        assert sdk_record["mounts"].pop(target) == "rw" and direct_record["mounts"].pop(target) == "ro"
    # 5. One host: direct runs with the network disabled (--network gives it one); the SDKs always attach
    #    their network. Several hosts: both have it.
    assert sdk_record["interfaces"] == ["eth0", "lo"]
    assert direct_record["interfaces"] == (["lo"] if hosts == 1 else ["eth0", "lo"])
    for record in (sdk_record, direct_record):
        del record["interfaces"]
    # 6. A name outside the job never resolves in direct (no route out) and fails at once, or within 2 s on the
    #    job's internal network (the engine's DNS leaves the resolver waiting 20 s there without dns_opt);
    #    through the SDKs' network it goes to the host's resolver.
    lookup = direct_record.pop("outside_lookup")
    assert lookup["how"] == "failed" and lookup["seconds"] < 5, lookup
    sdk_record.pop("outside_lookup")


@pytest.mark.parametrize("sdk,hosts", [("v2", 1), ("v2", 2), ("v3", 1), ("v3", 2)])
def test_direct_writes_the_contract_sdk_local_mode_writes(probe_image, tmp_path, sdk, hosts):
    python = SDK3_PYTHON if sdk == "v3" else sys.executable
    by_sdk = run(probe_job(probe_image, sdk, hosts), "sdk", runs_dir=tmp_path / "sdk", python=python, stream=False,
                 timeout=600)
    direct = run(probe_job(probe_image, sdk, hosts), "direct", runs_dir=tmp_path / "direct", stream=False, timeout=600)
    assert by_sdk.sdk == sdk and direct.extra["contract"] == sdk
    # Direct: no network for one host, a network of the job's own without a route out for several.
    assert direct.extra["network"] == ("none" if hosts == 1 else "internal")
    sdk_records, direct_records = records(by_sdk), records(direct)
    assert len(sdk_records) == len(direct_records) == hosts

    for sdk_record, direct_record in zip(sdk_records, direct_records):
        # What the contract fixes, before anything is normalised: the same config files byte for byte as
        # parsed JSON (hyperparameters as strings in the SDK's encoding), the same argv and command.
        assert direct_record["config"] == sdk_record["config"]
        assert direct_record["argv"] == sdk_record["argv"]
        assert direct_record["pid1"] == sdk_record["pid1"]
        known_differences(sdk_record, direct_record, sdk, hosts)
        assert direct_record == sdk_record  # environment (SM_* included), mounts, cwd, data and code listings

    config = sdk_records[0]["config"]
    expected_hps = ({k: str(v) for k, v in HYPERPARAMETERS.items()} if sdk == "v2" else
                    {k: v if isinstance(v, str) else json.dumps(v) for k, v in HYPERPARAMETERS.items()})
    assert config["hyperparameters.json"] == expected_hps
    assert config["resourceconfig.json"]["network_interface_name"] == {"v2": "eth0", "v3": "ethwe"}[sdk]
    assert config["inputdataconfig.json"] == {"train": {"TrainingInputMode": "File", "ContentType": "text/csv"},
                                              "validation": {"TrainingInputMode": "File"}}
    assert "checkpointconfig.json" not in config  # SDK local mode has no checkpoint sync
    assert sdk_records[0]["environ"]["MY_SETTING"] == "on"

    # The artifacts: the same members with the same bytes (the records compared above, normalised).
    sdk_model, direct_model = tar_contents(by_sdk.model_artifact), tar_contents(direct.model_artifact)
    assert direct_model == sdk_model and "model.json" in sdk_model
    sdk_output, direct_output = tar_contents(by_sdk.output_artifact), tar_contents(direct.output_artifact)
    assert sorted(direct_output) == sorted(sdk_output)
    assert {k: v for k, v in direct_output.items() if "probe-" not in k} == {k: v for k, v in sdk_output.items() if "probe-" not in k}
