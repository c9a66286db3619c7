"""The one CLI: `smkit init|build|push|run|list|doctor|bases`.

`smkit` works on the images.toml of the current directory (or SMKIT_PROJECT), so a team keeps its scripts
in its own repository; build.py, `python -m local_mode` and the make targets are thin entry points of the
same commands. The smkit modules are imported inside each command: the project directory is settled
(SMKIT_PROJECT) before anything reads it.

    smkit init NAME --framework xgboost|pytorch|sklearn [--from train.py]   a new image, ready to build
    smkit build [--image NAME] [--base aws|local|URI] [--dry-run]           build (linux/amd64), record in build/images.json
    smkit push [--registry HOST/NS]                                         push to ECR (default) or an OCI registry
    smkit run --image NAME [--cloud ...]                                    SageMaker local mode, or the cloud
    smkit list | doctor | bases
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  {prog} init churn --framework sklearn --from ~/notebooks/train.py   a new image from your script
  {prog} build --image churn --base local             build it on the offline stand-in base
  {prog} run --image churn                            train it in SageMaker local mode on its sample data
  {prog} build --base local                           build every image offline (stand-in bases)
  {prog} build --image xgboost --region eu-west-1 --tag latest
  {prog} build --image pytorch --processor gpu
  {prog} push --region us-east-1                      push to <account>.dkr.ecr.us-east-1.amazonaws.com
  {prog} push --registry 127.0.0.1:5000/ml            push to an OCI registry (after docker login)
  {prog} build --dry-run                              print the Dockerfile, build args and every docker/AWS action
"""


def cmd_build(args) -> int:
    from smkit import console, image_build, images_json, images_toml

    specs = images_toml.select(images_toml.load(), args.image)
    built = []
    for spec in specs:
        result = image_build.build_image(
            spec,
            base_choice=args.base,
            region=args.region,
            processor=args.processor,
            moving_tags=args.tag or [],
            python_base=args.python_base,
            verbose=args.verbose,
            dry_run=args.dry_run,
        )
        if result is not None:
            built.append(result)
    for result in built:
        size = result.size / 1e9
        console.out.print(f"[bold]{result.name}[/]  {result.ref}  ({size:.2f} GB, {result.build_seconds:.0f}s"
                          + (", unchanged" if result.cached else "") + ")")
    if built:
        console.err.print(f"    recorded in {images_json.MANIFEST}; next: `make local IMAGE=<name>` or `make push`")
    return 0


def cmd_push(args) -> int:
    from smkit import bases, code, console, images_json, images_toml, registry

    specs = images_toml.select(images_toml.load(), args.image)
    region = None if args.registry else bases.require_region(args.region)
    for spec in specs:
        entry = images_json.entry(spec.name)
        tags = [t for t in entry.get("moving_tags", []) if t not in (args.tag or [])] + list(args.tag or [])
        if args.dry_run:
            console.out.print(f"[bold]{spec.name}[/]: {entry['local_ref']}")
            console.out.print(f"  0. check the image's scripts-sha256 label is the hash of the working tree's {', '.join(spec.scripts)}")
            if args.registry:
                host = args.registry.split("/", 1)[0]
                console.out.print(f"  1. HEAD {host}/v2/<repo>/manifests/{entry['tag']} (credentials from the docker config)")
            else:
                console.out.print(f"  1. ecr describe-repositories {spec.repository} --region {region}; create it if missing "
                                  "(scan on push, " + (f"KMS encryption with {args.kms_key}" if args.kms_key else "AES256 encryption")
                                  + ", lifecycle policy: untagged images expire after 14 days"
                                  + (", IMMUTABLE tags" if args.immutable_tags else "") + ")")
                console.out.print(f"  2. ecr get-authorization-token --region {region} (a login for this push only)")
                console.out.print(f"  3. HEAD <registry>/v2/{spec.repository}/manifests/{entry['tag']}: skip if it is this image")
            console.out.print(f"  -  docker tag + docker push {entry['local_ref']} -> <registry>/<repository>:{entry['tag']}"
                              + "".join(f", :{t}" for t in tags) + " (retrying transient failures)")
            console.out.print("  -  record image_uri and digest in build/images.json")
            continue
        # Never push code other than the working tree's (e.g. edits tried with `run --mount-code`, not rebuilt).
        code.require_current(spec, entry["local_ref"])
        if args.registry:
            target = registry.oci_target(args.registry, spec.repository)
        else:
            target, state = registry.ecr_target(
                region, spec.repository, registry_host=args.registry_host,
                immutable=True if args.immutable_tags else (False if args.mutable_tags else None), kms_key=args.kms_key,
            )
            if state.created:
                console.note(f"created ECR repository {state.name} (scan on push, {state.encryption} encryption, "
                             f"lifecycle policy, {'IMMUTABLE' if state.immutable else 'MUTABLE'} tags)")
        console.step(f"pushing {spec.name} to {target.image}")
        result = registry.push(entry["local_ref"], target, entry["tag"], extra_tags=tags, retries=args.retries,
                               show_progress=not args.quiet)
        images_json.update(spec.name, {"pushed": {
            "image_uri": result.image_uri,
            "digest": result.digest,
            "pinned_image_uri": result.pinned,
            "tags": result.tags,
            "registry": target.registry,
            "registry_kind": target.kind,
            "region": target.region,
            "skipped": result.skipped,
            "layers_pushed": result.layers_pushed,
            "layers_existing": result.layers_existing,
            "bytes_pushed": result.bytes_pushed,
            "push_seconds": result.seconds,
            "attempts": result.attempts,
        }})
        how = ("already in the registry at this digest; nothing pushed" if result.skipped else
               f"{result.layers_pushed} layer(s) uploaded ({result.bytes_pushed / 1e6:.1f} MB), "
               f"{result.layers_existing} already there, {result.seconds:.0f}s")
        console.note(how)
        console.out.print(f"[bold]{spec.name}[/]\n  image_uri: {result.image_uri}\n  pinned:    {result.pinned}")
    if not args.dry_run:
        console.err.print("    use the pinned image_uri in Estimator(image_uri=...) / ModelTrainer(training_image=...)")
    return 0


def cmd_list(args) -> int:
    from smkit import bases, console, images_json, images_toml
    from smkit.errors import ToolkitError
    from smkit.standin import STANDINS

    specs = images_toml.load()
    built = images_json.load()["images"]
    region = bases.session_region(args.region)
    for spec in specs.values():
        if region:
            try:
                base = bases.prebuilt_uri(spec, region, args.processor)
            except ToolkitError as exc:
                base = f"(unresolvable: {exc.what})"
        else:
            base = "(set --region to resolve the prebuilt base)"
        family = spec.base_uri or f"{spec.framework} {spec.version}" + (f" {spec.py_version}" if spec.py_version else "")
        console.out.print(f"[bold]{spec.name}[/]  {family} {args.processor or spec.processor}")
        console.out.print(f"  {'base' if spec.base_uri else 'prebuilt base'}: {base}")
        console.out.print(f"  stand-in base: {STANDINS.get(spec.framework, '(none: give framework to play it offline)')}")
        console.out.print(f"  dockerfile:    {spec.dockerfile or 'the smkit template (containers/Dockerfile)'}; "
                          f"scripts: {', '.join(spec.scripts)}; program: {spec.program}")
        entry = built.get(spec.name)
        if entry:
            console.out.print(f"  built:         {entry['local_ref']} on {entry['base']} ({entry['built_at']})")
            if entry.get("pushed"):
                console.out.print(f"  pushed:        {entry['pushed']['pinned_image_uri']}")
    return 0


def cmd_bases(args) -> int:
    from smkit import console, standin

    frameworks = args.framework or sorted(standin.STANDINS)
    for framework in frameworks:
        if args.dry_run:
            console.out.print(f"{framework}: docker build -t {standin.STANDINS[framework]} containers/standin/{framework} "
                              f"(--python-base {args.python_base}; skipped when an image with the same inputs exists"
                              + ("" if not args.force else "; --force: rebuilt anyway") + ")")
            continue
        name = standin.ensure_standin(framework, python=args.python_base, verbose=args.verbose, force=args.force)
        console.out.print(f"{framework}: {name}")
    return 0


def cmd_doctor(args) -> int:
    from smkit import doctor

    return doctor.run(region=args.region, registry_arg=args.registry)


def cmd_init(args) -> int:
    from smkit import console, scaffold
    from smkit.paths import PROJECT

    scaffold.init(PROJECT, args.name, args.framework, Path(args.source) if args.source else None, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    console.out.print(f"[bold]{args.name}[/]: next, build it and train it on its sample data:\n"
                      f"  make build IMAGE={args.name} BASE=local && make local IMAGE={args.name}\n"
                      f"  (or: smkit build --image {args.name} --base local && smkit run --image {args.name})")
    return 0


CHECK_DESCRIPTION = """\
Run a short conformance suite against a training image by its URI, ours or anybody's: it is started as
SageMaker starts it (the direct backend of local_mode) on tiny generated data, and judged by exit codes,
model.tar.gz/output.tar.gz and its log. Each check prints PASS/FAIL and the fix; exit code 1 on any failure.

examples:
  {prog} check xgboost                                 the image built last as xgboost
  {prog} check 683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5 --report report.md
  {prog} check my-image:dev --channel train=data/train --hp epochs=1 --only sigterm --grace 120
"""


def parser(prog: str = "smkit", check_options: bool = True) -> argparse.ArgumentParser:
    """The CLI. `check_options=False` leaves out `check`'s options (they import the run layer: ~60 ms of
    every `build`, which a rebuild after an edit should not pay)."""
    examples = EXAMPLES.format(prog=prog)
    top = argparse.ArgumentParser(
        prog=prog,
        description="Build, tag, push and run custom SageMaker training images (the images.toml of the project "
                    "lists them: the current directory for `smkit`, or SMKIT_PROJECT).",
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{init,build,push,run,list,doctor,bases,check}")

    init = sub.add_parser("init", help="start a new image: a training script (an example, or yours with --from), "
                          "its requirements, sample data and its images.toml table",
                          epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("name", help="the image name (lowercase letters, digits, - and _)")
    init.add_argument("--framework", required=True, choices=["xgboost", "pytorch", "sklearn"],
                      help="the prebuilt SageMaker base image family it extends")
    init.add_argument("--from", dest="source", metavar="PATH/TO/train.py",
                      help="your own training script, copied in unchanged (default: a short commented example)")
    init.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    init.set_defaults(func=cmd_init)
    sub.add_parser("run", help="run a built image in SageMaker local mode, or in the cloud with --cloud "
                   "(`run --help`: the options of python -m local_mode run)", add_help=False)

    def common(p, images=True):
        if images:
            p.add_argument("--image", action="append", metavar="NAME", help="only this image from images.toml (repeat; default: all)")
        p.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then your AWS config)")
        p.add_argument("--verbose", action="store_true", help="print every line of the build/push output")

    build = sub.add_parser("build", help="build images (linux/amd64) and record them in build/images.json",
                           epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(build)
    build.add_argument("--base", default="aws", metavar="aws|local|URI",
                       help="aws: the prebuilt SageMaker image for the region (default; logs in to its registry); "
                            "local: the offline stand-in; or any image reference")
    build.add_argument("--processor", choices=["cpu", "gpu"], help="override the base variant of images.toml")
    build.add_argument("--tag", action="append", metavar="TAG", help="an extra moving tag such as latest or a release name (repeat)")
    build.add_argument("--python-base", default="auto", metavar="auto|debootstrap|IMAGE",
                       help="what the stand-in bases start from (default auto: python:3.11-slim, else a Debian root)")
    build.add_argument("--dry-run", action="store_true", help="print every docker and AWS action in order; touch nothing")
    build.set_defaults(func=cmd_build)

    push = sub.add_parser("push", help="push built images to ECR (default) or an OCI registry",
                          epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(push)
    push.add_argument("--registry", metavar="HOST[:PORT][/NAMESPACE]", help="an OCI registry instead of ECR (credentials from docker login)")
    push.add_argument("--tag", action="append", metavar="TAG", help="also push this moving tag (repeat)")
    mut = push.add_mutually_exclusive_group()
    mut.add_argument("--immutable-tags", action="store_true", help="ECR: make the repository's tags IMMUTABLE")
    mut.add_argument("--mutable-tags", action="store_true", help="ECR: make the repository's tags MUTABLE")
    push.add_argument("--kms-key", help="ECR: encrypt a new repository with this KMS key (default AES256)")
    push.add_argument("--registry-host", metavar="HOST",
                      help="ECR: send the layers to this host instead of <account>.dkr.ecr.<region>.amazonaws.com "
                           "(an ECR VPC endpoint name or a proxy); API calls still go to ECR")
    push.add_argument("--retries", type=int, default=4, help="retries of transient push failures (default 4, with backoff)")
    push.add_argument("--quiet", action="store_true", help="no per-layer progress")
    push.add_argument("--dry-run", action="store_true", help="print every docker and AWS action in order; touch nothing")
    push.set_defaults(func=cmd_push)

    doctor = sub.add_parser("doctor", help="check the engine, compose, architecture, AWS and the registry; print a fix for each problem")
    doctor.add_argument("--region", help="AWS region to check")
    doctor.add_argument("--registry", metavar="HOST[:PORT][/NAMESPACE]", help="also check this OCI registry")
    doctor.set_defaults(func=cmd_doctor)

    lst = sub.add_parser("list", help="show each image of images.toml, its bases and what was built/pushed")
    lst.add_argument("--region")
    lst.add_argument("--processor", choices=["cpu", "gpu"])
    lst.set_defaults(func=cmd_list)

    bases_cmd = sub.add_parser("bases", help="build the offline stand-in base images (cached by the hash of their inputs)")
    bases_cmd.add_argument("--framework", action="append", choices=["xgboost", "pytorch", "sklearn"])
    bases_cmd.add_argument("--python-base", default="auto", metavar="auto|debootstrap|IMAGE")
    bases_cmd.add_argument("--force", action="store_true", help="rebuild even if up to date")
    bases_cmd.add_argument("--verbose", action="store_true")
    bases_cmd.add_argument("--dry-run", action="store_true", help="print what would be built; build nothing")
    bases_cmd.set_defaults(func=cmd_bases)

    check = sub.add_parser("check", help="check that any training image honours the SageMaker training contract "
                           "(train, channels, model.tar.gz, failure file, SIGTERM, no network, amd64, two hosts)",
                           description=CHECK_DESCRIPTION.format(prog=prog),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    if check_options:
        from local_mode import check as contract_check  # the run layer drives the image (as `run` does)

        contract_check.add_arguments(check)
        check.set_defaults(func=contract_check.cmd_check)
    return top


def main(argv: list[str] | None = None, prog: str = "smkit") -> int:
    from smkit import console

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # the run layer's own CLI, unchanged (python -m local_mode run)
        from local_mode.cli import main as local_mode_main

        return local_mode_main(argv)
    args = parser(prog, check_options="check" in argv).parse_args(argv)
    return console.run_command(lambda: args.func(args))


def console_main() -> int:
    """The `smkit` console script: the project is the current directory unless SMKIT_PROJECT names one."""
    os.environ.setdefault("SMKIT_PROJECT", os.getcwd())
    return main()


if __name__ == "__main__":
    sys.exit(main())
