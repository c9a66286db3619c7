"""Print, as shell assignments, the environment a SageMaker toolkit hands the user's script in this
container, and the command it would run. Used by enter.sh; runs with the image's own Python.

The image's toolkit computes both when it has one, so the shell sees exactly what the script would see:
  sagemaker-training (PyTorch DLC, most framework images): environment.Environment().to_env_vars(),
    .to_cmd_args(), and the entry point's type (script -> `python script`, package -> `python -m module`,
    anything else -> `/bin/sh -c ./entry`).
  sagemaker-containers (the legacy toolkit of the XGBoost image): training_env(), the same methods; in
    script mode it pip-installs /opt/ml/code and runs `python -m module`.
An image without either gets the variables computed here from /opt/ml/input/config (the documented
SM_* names; the banner says that they are an approximation) and only `train`.
"""

import json
import os
import shlex
import sys

CONFIG = "/opt/ml/input/config"


def _load(name):
    try:
        with open(os.path.join(CONFIG, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _decode(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def from_toolkit():
    """(toolkit, env vars, argv of the script) from the image's toolkit, or None without one."""
    try:
        from sagemaker_training import _entry_point_type, environment  # noqa: F401

        env = environment.Environment()
        name = "sagemaker-training"
        module_style = None
    except ImportError:
        try:
            import sagemaker_containers
            from sagemaker_containers import _entry_point_type  # noqa: F401

            env = sagemaker_containers.training_env()
            name = "sagemaker-containers (legacy)"
            module_style = True
        except ImportError:
            return None
    entry = env.user_entry_point
    args = [str(a) for a in env.to_cmd_args()]
    code_dir = getattr(env, "module_dir", None) or "/opt/ml/code"
    if code_dir.startswith("s3://") or "://" in code_dir:
        code_dir = "/opt/ml/code"
    if not entry:
        argv = None
    else:
        kind = str(_entry_point_type.get(code_dir if os.path.isdir(code_dir) else "/opt/ml/code", entry))
        module = entry[:-3] if entry.endswith(".py") else entry
        if module_style or "PACKAGE" in kind:
            argv = [sys.executable, "-m", module] + args
        elif "PYTHON" in kind:
            argv = [sys.executable, entry] + args
        else:
            argv = ["/bin/sh", "-c", "./" + entry] + args
    variables = {k: str(v) for k, v in env.to_env_vars().items()}
    return name, variables, argv


def by_hand():
    """The documented SM_* variables, computed from the config files (no toolkit in the image)."""
    hps = {k: _decode(v) for k, v in _load("hyperparameters.json").items()}
    resources = _load("resourceconfig.json")
    channels = sorted(_load("inputdataconfig.json"))
    variables = {
        "SM_HPS": json.dumps(hps), "SM_CHANNELS": json.dumps(channels),
        "SM_MODEL_DIR": "/opt/ml/model", "SM_OUTPUT_DIR": "/opt/ml/output",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data", "SM_INPUT_DIR": "/opt/ml/input",
        "SM_INPUT_CONFIG_DIR": CONFIG, "SM_HOSTS": json.dumps(sorted(resources.get("hosts", []))),
        "SM_CURRENT_HOST": resources.get("current_host", ""),
        "SM_NETWORK_INTERFACE_NAME": resources.get("network_interface_name", "eth0"),
        "SM_CURRENT_INSTANCE_TYPE": resources.get("current_instance_type", ""),
        "SM_NUM_CPUS": str(os.cpu_count() or 1), "SM_NUM_GPUS": "0",
    }
    for channel in channels:
        variables["SM_CHANNEL_" + channel.upper()] = "/opt/ml/input/data/" + channel
    for key, value in hps.items():
        variables["SM_HP_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
    return "none (variables computed by smkit from /opt/ml/input/config: an approximation)", variables, None


def main():
    found = from_toolkit()
    toolkit, variables, argv = found if found else by_hand()
    lines = []
    for key, value in sorted(variables.items()):
        if key.replace("_", "").isalnum():
            lines.append("export %s=%s" % (key, shlex.quote(value)))
    script = " ".join(shlex.quote(a) for a in argv) if argv else None
    banner = [
        "smkit: a shell in the job's container: /opt/ml as SageMaker lays it out, the SM_* environment "
        "the toolkit hands the script.",
        "  toolkit:        " + toolkit,
        "  the whole job:  train        (what SageMaker runs: toolkit, then the script)",
    ]
    if script:
        banner.append("  the script:     cd /opt/ml/code && " + script)
    banner.append("  configuration:  ls /opt/ml/input/config; env | grep ^SM_")
    lines.append("export SMKIT_TOOLKIT=%s" % shlex.quote(toolkit))
    lines.append("export SMKIT_SCRIPT_COMMAND=%s" % shlex.quote(script or ""))
    lines.append("SMKIT_BANNER=%s" % shlex.quote("\n".join(banner)))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
