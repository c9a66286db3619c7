"""python -m local_mode: run a built image in SageMaker local mode, or the same job in the cloud."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from local_mode import backends, curves, inside_cli, interrupt, summary
from local_mode.job import RUNS_DIR, JobSpec, parse_channels, resolve_image, sample_job
from smkit import console, images_json
from smkit.errors import ConfigError

EXAMPLES = """\
examples:
  python -m local_mode run --image xgboost                      # bundled sample data, SDK local mode
  python -m local_mode run --image xgboost --backend direct     # the same job straight through Docker (fast)
  python -m local_mode run --image xgboost --backend direct --mount-code   # the working tree's scripts, no build
  python -m local_mode run --image xgboost --watch              # re-run on every save (make dev IMAGE=xgboost)
  python -m local_mode run --image xgboost --channel train=data/train --channel validation=data/val \\
      --hp num_round=200 --hp eta=0.1 --instance-count 2
  python -m local_mode run --image pytorch --sdk v3              # needs SageMaker SDK v3 in this Python
  python -m local_mode run --image xgboost --dry-run             # print the SDK call, run nothing
  python -m local_mode run --image xgboost --backend cloud --role arn:aws:iam::123456789012:role/SageMaker \\
      --instance-type ml.m5.xlarge --channel train=s3://bucket/train --output-path s3://bucket/out
  python -m local_mode demo                                     # every built image on its sample data
  python -m local_mode runs --image xgboost                     # past runs, newest first
"""


def parse_value(text: str):
    """`50` -> 50, `[64, 32]` -> [64, 32], `true` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: list[str], option: str) -> dict:
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r} is not KEY=VALUE.", f"write e.g. {option} num_round=100")
        values[key] = value
    return values


def build_spec(args) -> JobSpec:
    image_arg = args.image
    if image_arg is None:
        built = list(images_json.load()["images"])
        if len(built) != 1:
            raise ConfigError(
                "Which image? " + (f"build/images.json has {', '.join(built)}." if built else "Nothing is built yet."),
                "pass --image NAME (e.g. --image xgboost) or build first with `make build BASE=local`",
            )
        image_arg = built[0]
    if args.backend == "cloud":
        from local_mode import cloud

        image, image_name = cloud.pushed_image(image_arg)
    else:
        image, image_name = resolve_image(image_arg)
    hyperparameters: dict = {}
    if args.channel:
        channels = parse_channels(args.channel, args.content_type)
    else:
        if args.backend == "cloud":
            raise ConfigError("A cloud job needs its channels.", "pass --channel train=s3://bucket/prefix (or a local dir with --upload-prefix)")
        channels, hyperparameters = sample_job(image_name or image_arg)
        console.note(f"no --channel given: using the bundled sample data ({', '.join(c.name for c in channels)})")
    if args.hyperparameters:
        text = Path(args.hyperparameters[1:]).read_text() if args.hyperparameters.startswith("@") else args.hyperparameters
        hyperparameters.update(json.loads(text))
    hyperparameters.update({k: parse_value(v) for k, v in parse_pairs(args.hp, "--hp").items()})
    spec = JobSpec(
        image=image,
        image_name=image_name,
        channels=channels,
        hyperparameters=hyperparameters,
        environment=parse_pairs(args.env, "--env"),
        instance_type=args.instance_type or ("ml.m5.xlarge" if args.backend == "cloud" else "local"),
        instance_count=args.instance_count,
        job_name=args.job_name or "",
        sdk=args.sdk,
        region=args.region,
        max_run_seconds=args.max_run,
        checkpoint_local_path=args.checkpoint_local_path,
        checkpoint_dir=args.checkpoint_dir,
    )
    if args.backend == "cloud":
        from local_mode import cloud

        spec.metric_definitions = cloud.metric_definitions(image_name, Path(args.runs_dir))
        spec.role = args.role or ""
        spec.output_path = args.output_path
        spec.checkpoint_s3_uri = args.checkpoint_s3_uri
        spec.spot = args.spot
        spec.max_wait_seconds = args.max_wait
    return spec


def resolve_backend(args) -> None:
    """--cloud is a synonym of --backend cloud; options of one backend are refused by the others."""
    if args.cloud:
        if args.backend not in (None, "cloud"):
            raise ConfigError(f"--cloud contradicts --backend {args.backend}.", "pass one of them")
        args.backend = "cloud"
    if args.watch:  # the inner loop: no SDK, no build
        if args.backend not in (None, "direct"):
            raise ConfigError(f"--watch runs the direct backend, not {args.backend}.", "drop --backend (or --cloud)")
        args.backend, args.mount_code = "direct", True
    args.backend = args.backend or "sdk"
    inside = inside_cli.mode(args)
    if inside and args.backend != "direct":
        # SDK local mode offers no way into its containers (it writes and runs its own compose file).
        if args.backend == "cloud":
            raise ConfigError(f"{inside} runs locally.", "drop --cloud / --backend cloud")
        console.note(f"{inside} runs on the direct backend (the same contract as SDK local mode; the SDK cannot "
                     "attach a terminal or a debugger to its containers)")
        args.backend = "direct"
    if args.backend != "direct":
        for flag, value in (("--network", args.network == "bridge"), ("--checkpoint-dir", args.checkpoint_dir),
                            ("--mount-code", args.mount_code)):
            if value:
                raise ConfigError(f"{flag} applies to the direct backend only.", f"add --backend direct, or drop {flag}")


def cmd_run(args) -> int:
    resolve_backend(args)
    spec = build_spec(args)
    runtime = inside_cli.apply_runtime(args, spec)
    if args.dry_run:
        if args.backend == "cloud":
            from local_mode import cloud

            cloud.print_request(spec, upload_prefix=args.upload_prefix)
        else:
            print_local_plan(spec, args.backend)
            if args.mount_code:
                from local_mode import mounted

                image_spec = mounted.image_spec_for(spec)
                console.out.print(f"/opt/ml/code <- a fresh copy of {', '.join(image_spec.scripts)} per host (read-write)"
                                  + (", again after every save (--watch)" if args.watch else ""), markup=False)
        return 0
    if inside_cli.mode(args):
        return inside_cli.run_inside(args, spec, runtime)
    options: dict = {}
    if args.backend == "direct":
        options = {"network": args.network == "bridge", "docker_options": runtime.docker_options()}
    if args.mount_code:
        from local_mode import mounted, watch

        if args.watch:
            return watch.watch(spec, mounted.image_spec_for(spec), runs_dir=Path(args.runs_dir), timeout=args.timeout,
                               stream=not args.quiet, keep_work=args.keep, **options)
        return run_and_report(lambda: mounted.run_mounted(spec, runs_dir=Path(args.runs_dir), timeout=args.timeout,
                                                          stream=not args.quiet, keep_work=args.keep, **options))
    return run_and_report(lambda: backends.run(
        spec, args.backend, runs_dir=Path(args.runs_dir), timeout=args.timeout, stream=not args.quiet,
        keep_work=args.keep, upload_prefix=args.upload_prefix, wait=not args.no_wait, **options))


def run_and_report(job) -> int:
    """Run one job with SIGINT/SIGTERM/SIGHUP stopping it, print its summary; the exit code: 0 completed
    (or submitted without waiting), 1 failed, 128+N when signal N stopped it."""
    with curves.drawing_deferred():  # the learning curves are drawn after the summary is printed
        try:
            with interrupt.signals_interrupt():
                result = job()
        except (interrupt.Interrupted, KeyboardInterrupt) as exc:
            try:
                if getattr(exc, "result", None) is not None:
                    summary.show(exc.result)
                else:
                    console.err.print(f"[red]{interrupt.reason(exc)}[/] before the job started")
            except OSError:
                pass  # SIGHUP: the terminal is gone; summary.json in the run directory has it all
            return exc.exit_code if isinstance(exc, interrupt.Interrupted) else 130
        summary.show(result)
        return 0 if result.ok or result.status == "InProgress" else 1


def print_local_plan(spec: JobSpec, backend: str = "sdk") -> None:
    """What a local run would do: the containers a direct run starts, or the SDK v2 and v3 code of an sdk run."""
    if backend == "direct":
        print_direct_plan(spec)
        return
    channels = {c.name: str(Path(c.source).resolve()) for c in spec.channels}
    console.out.print(f"# local run of {spec.image} (nothing was run). The same job in SDK v2:")
    console.out.print(
        "from sagemaker.estimator import Estimator\n"
        f"estimator = Estimator(image_uri={spec.image!r}, role={spec.role!r},\n"
        f"    instance_count={spec.instance_count}, instance_type={'local_gpu' if spec.instance_type == 'local_gpu' else 'local'!r},\n"
        f"    output_path='file://<run dir>/output', hyperparameters={spec.hyperparameters!r})\n"
        f"estimator.fit({ {k: 'file://' + v for k, v in channels.items()}!r})",
        markup=False,
    )
    console.out.print("# and in SDK v3:", markup=False)
    console.out.print(
        "from sagemaker.train import ModelTrainer\nfrom sagemaker.train.model_trainer import Mode\n"
        "from sagemaker.core.training.configs import Compute, InputData\n"
        f"trainer = ModelTrainer(training_image={spec.image!r}, training_mode=Mode.LOCAL_CONTAINER,\n"
        f"    compute=Compute(instance_type={'local_gpu' if spec.instance_type == 'local_gpu' else 'local_cpu'!r}, instance_count={spec.instance_count}),\n"
        f"    local_container_root='<run dir>/work', hyperparameters={spec.hyperparameters!r})\n"
        f"trainer.train(input_data_config=[{', '.join(f'InputData(channel_name={k!r}, data_source={v!r})' for k, v in channels.items())}])",
        markup=False,
    )


def print_direct_plan(spec: JobSpec) -> None:
    from local_mode import contract

    dialect = contract.resolve_dialect(spec.sdk)
    hosts = contract.host_names(spec.instance_count, dialect)
    spec.job_name = spec.job_name or "<job name>"
    console.out.print(f"# direct run of {spec.image} (nothing was run): {len(hosts)} container(s), contract {dialect}", markup=False)
    for host in hosts:
        console.out.print(f"## {host}: docker run --hostname {host} ... {spec.image} train", markup=False)
        files = {
            "hyperparameters.json": contract.encode_hyperparameters(spec.hyperparameters, dialect),
            "resourceconfig.json": contract.resource_config(host, hosts, spec.instance_type, dialect),
            "inputdataconfig.json": contract.input_data_config(spec.channels),
        }
        for name, content in files.items():
            console.out.print(f"/opt/ml/input/config/{name}: {json.dumps(content)}", markup=False)
        for channel in spec.channels:
            console.out.print(f"/opt/ml/input/data/{channel.name} <- {Path(channel.source).resolve()} (read-only)", markup=False)


def cmd_demo(args) -> int:
    built = images_json.load()["images"]
    names = args.image or sorted(built)
    if not names:
        raise ConfigError("Nothing is built yet.", "run `make demo` (it builds first) or `python build.py build --base local`")
    failures = 0
    for name in names:
        image, image_name = resolve_image(name)
        channels, hyperparameters = sample_job(image_name or name)
        spec = JobSpec(image=image, image_name=image_name, channels=channels, hyperparameters=hyperparameters, sdk=args.sdk)
        if args.dry_run:
            print_local_plan(spec, args.backend)
            continue
        finished = []

        def job(spec=spec):
            finished.append(backends.run(spec, args.backend, runs_dir=Path(args.runs_dir), stream=not args.quiet,
                                         timeout=args.timeout))
            return finished[-1]

        code = run_and_report(job)
        if code > 1:  # stopped by a signal: no further images
            return code
        if code == 0 and finished and finished[-1].model_artifact:
            console.out.print(f"[bold green]{name}: the model is at {finished[-1].model_artifact}[/]")
        failures += code
    return 1 if failures else 0


def cmd_clean(args) -> int:
    from local_mode.cleanup import RUN_DIR_LABEL, remove_containers, remove_networks, remove_tree
    from local_mode.runner import stop_containers
    from smkit.standin import STANDINS

    runs = Path(args.runs_dir)
    if not runs.exists():
        return 0
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        if args.dry_run:
            console.out.print(f"would stop the containers of {run} and remove it")
            continue
        stop_containers(run)
        remove_containers(RUN_DIR_LABEL, str(run.resolve()))
        remove_networks(RUN_DIR_LABEL, str(run.resolve()))
        try:
            shutil.rmtree(run)
        except PermissionError:
            spec = json.loads((run / "spec.json").read_text()) if (run / "spec.json").exists() else {}
            remove_tree(run, spec.get("image", STANDINS["xgboost"]))
        console.note(f"removed {run}")
    return 0


def cmd_runs(args) -> int:
    from local_mode import past_runs

    runs = past_runs.find_runs(args.runs_dir, image=args.image)[: args.last]
    if args.json:
        console.out.print(past_runs.as_json(runs), markup=False, highlight=False, soft_wrap=True)
    elif runs:
        past_runs.show_runs(runs)
    else:
        console.note(f"no runs{' of ' + args.image if args.image else ''} in {args.runs_dir}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m local_mode",
        description="Run a built training image as a SageMaker training job: through SageMaker Python SDK "
        "local mode, straight through Docker (--backend direct), or on SageMaker itself (--backend cloud).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{run,demo,runs,check,clean}")

    run = sub.add_parser("run", help="run one job: SDK local mode (default), direct through Docker, or in the cloud",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--image", help="an image name from build/images.json (xgboost, pytorch) or an image reference")
    run.add_argument("--channel", action="append", metavar="NAME=PATH",
                     help="an input channel: a local directory (local) or s3:// URI (cloud); repeat for more. "
                          "Default: the image's bundled sample data")
    run.add_argument("--content-type", action="append", metavar="NAME=TYPE", help="ContentType of a channel, e.g. train=text/csv")
    run.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a hyperparameter (JSON values: 50, 0.1, [64,32], true); repeat")
    run.add_argument("--hyperparameters", metavar="JSON|@FILE", help="hyperparameters as a JSON object or @file.json")
    run.add_argument("--env", action="append", metavar="KEY=VALUE", help="an environment variable for the container")
    run.add_argument("--instance-count", type=int, default=1, help="number of hosts (default 1)")
    run.add_argument("--instance-type", help="local or local_gpu (default local); an ml.* type runs locally with that type's "
                     "CPU and memory limits (local_mode/instance_types.py); with --cloud the type to run on (default ml.m5.xlarge)")
    run.add_argument("--backend", choices=["sdk", "direct", "cloud"],
                     help="what runs the job: sdk = SageMaker SDK local mode (default; the fidelity gate before the "
                          "cloud), direct = the same containers straight through Docker (the fast inner loop), "
                          "cloud = SageMaker itself (same as --cloud)")
    run.add_argument("--sdk", choices=["auto", "v2", "v3"], default="auto",
                     help="which SageMaker SDK must run it (default: the installed one); with --backend direct, "
                          "whose contract dialect to write")
    run.add_argument("--job-name", help="default: <image>-<UTC time>")
    run.add_argument("--region", help="AWS region (default: AWS_REGION / config / us-east-1 for local runs)")
    run.add_argument("--max-run", type=int, default=24 * 3600, metavar="SECONDS", help="job time limit (default 1 day)")
    run.add_argument("--checkpoint-local-path", help="checkpoint directory inside the container (default /opt/ml/checkpoints)")
    run.add_argument("--timeout", type=float, help="stop waiting (and stop the containers) after this many seconds")
    run.add_argument("--runs-dir", default=str(RUNS_DIR), help=f"where local runs keep log and artifacts (default {RUNS_DIR})")
    run.add_argument("--keep", action="store_true",
                     help="keep the scratch directories of a local run (the SDK's, or direct's work/: config, model, output per host)")
    run.add_argument("--quiet", action="store_true", help="do not stream the container log (it is still saved)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the SDK call (sdk), the containers and config files (direct) or the CreateTrainingJob "
                          "request (cloud); run nothing")
    direct = run.add_argument_group("direct (--backend direct): the containers straight through Docker")
    direct.add_argument("--network", nargs="?", const="bridge", choices=["bridge", "host"],
                        help="--network: give the containers a route out (default: none; several hosts still reach "
                             "each other); --network host: the host's own network (VPN, SSO proxies; one host only)")
    direct.add_argument("--checkpoint-dir", metavar="DIR",
                        help="a local directory mounted as /opt/ml/checkpoints, with checkpointconfig.json written "
                             "(what --checkpoint-s3-uri is in the cloud)")
    direct.add_argument("--mount-code", action="store_true",
                        help="run the working tree's scripts (images.toml `scripts` of --image), copied over "
                             "/opt/ml/code, instead of the code baked in the image: an edit needs no build")
    direct.add_argument("--watch", action="store_true",
                        help="re-run the job on every save of those scripts, stopping a run still going; print "
                             "how each metric changed (implies --backend direct --mount-code; Ctrl-C ends)")
    inside_cli.add_options(run)
    cloud = run.add_argument_group("cloud (--backend cloud, or --cloud): the same job on SageMaker")
    cloud.add_argument("--cloud", action="store_true", help="the same as --backend cloud")
    cloud.add_argument("--role", help="execution role ARN (default: SAGEMAKER_ROLE)")
    cloud.add_argument("--output-path", help="s3:// prefix for model.tar.gz and output.tar.gz")
    cloud.add_argument("--upload-prefix", help="s3:// prefix to upload local --channel directories to first")
    cloud.add_argument("--checkpoint-s3-uri", help="s3:// prefix SageMaker syncs /opt/ml/checkpoints with (spot resume)")
    cloud.add_argument("--spot", action="store_true", help="managed spot training (needs --max-wait)")
    cloud.add_argument("--max-wait", type=int, metavar="SECONDS", help="spot: longest total wait, at least --max-run")
    cloud.add_argument("--no-wait", action="store_true", help="submit and return without waiting")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="train every built image in local mode on its bundled sample data")
    demo.add_argument("--image", action="append", help="only these images (repeat)")
    demo.add_argument("--sdk", choices=["auto", "v2", "v3"], default="auto")
    demo.add_argument("--backend", choices=["sdk", "direct"], default="sdk")
    demo.add_argument("--runs-dir", default=str(RUNS_DIR))
    demo.add_argument("--timeout", type=float)
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--dry-run", action="store_true", help="print the job each image would run; run nothing")
    demo.set_defaults(func=cmd_demo)

    runs = sub.add_parser("runs", help="list past local runs, newest first: image, backend, hyperparameters, final metrics, time",
                          description="List the runs under --runs-dir, newest first, from their spec.json and "
                                      "summary.json. Each run directory also holds log.txt, metrics.csv and curves.png.",
                          epilog="examples:\n  python -m local_mode runs\n  python -m local_mode runs --image xgboost --last 5\n"
                                 "  python -m local_mode runs --json | jq '.[0].metrics'",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_argument("--image", metavar="NAME", help="only runs of this image (images.toml name, reference or repository)")
    runs.add_argument("--last", type=int, metavar="N", help="only the N newest")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON (every field, nothing shortened)")
    runs.add_argument("--runs-dir", default=str(RUNS_DIR), help=f"where the runs are (default {RUNS_DIR})")
    runs.set_defaults(func=cmd_runs)

    check = sub.add_parser("check", help="check that any training image honours the SageMaker training contract")
    from local_mode import check as contract_check

    contract_check.add_arguments(check)
    check.set_defaults(func=contract_check.cmd_check)

    clean = sub.add_parser("clean", help="remove local run directories (root-owned files too) and their containers")
    clean.add_argument("--runs-dir", default=str(RUNS_DIR))
    clean.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    clean.set_defaults(func=cmd_clean)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # 2: the run could not start (bad input, no image); a job that ran and failed exits 1.
    return console.run_command(lambda: args.func(args), error_exit=2)


if __name__ == "__main__":
    sys.exit(main())
