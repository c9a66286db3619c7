# smkit: custom SageMaker training images. `make help` lists the targets.
#
#   make demo                     build both images on the offline stand-in base and train each in
#                                 SageMaker local mode on the bundled sample data
#   make test                     set up everything (virtualenvs, Docker engine, stand-in bases) and run the tests
#   make build push REGION=...    build on the prebuilt SageMaker base and push to ECR
#   make init IMAGE=name FRAMEWORK=xgboost|pytorch|sklearn [FROM=path/to/train.py]   a new image (build.py init)
#
# Variables (all optional):
#   IMAGE=xgboost|pytorch   one image instead of all        BASE=aws|local|URI   base image (default aws)
#   REGION=us-east-1        AWS region                      TAG=name             extra moving tag (e.g. latest)
#   REGISTRY=host:port/ns   push to an OCI registry instead of ECR (`make registry [PORT=5000]` starts one on loopback)
#   PROCESSOR=cpu|gpu       base image variant              ARGS="..."           more build.py / local_mode options

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV3 := .venv-sdk3
PY := $(VENV)/bin/python
PY3 := $(VENV3)/bin/python

IMAGE ?=
BASE ?= aws
REGION ?=
TAG ?=
REGISTRY ?=
PROCESSOR ?=
FRAMEWORK ?=
FROM ?=
ARGS ?=

build_opts = $(if $(IMAGE),--image $(IMAGE)) --base $(BASE) $(if $(REGION),--region $(REGION)) \
             $(if $(TAG),--tag $(TAG)) $(if $(PROCESSOR),--processor $(PROCESSOR))
push_opts = $(if $(IMAGE),--image $(IMAGE)) $(if $(REGION),--region $(REGION)) $(if $(TAG),--tag $(TAG)) \
            $(if $(REGISTRY),--registry $(REGISTRY))

.DEFAULT_GOAL := help
.PHONY: help venv venv-sdk3 engine bases test test-fast demo init build push list doctor local dev shell check train-cloud bench \
        lock clean registry registry-stop

help:
	@sed -n '2,14p' Makefile | sed 's/^# \{0,1\}//'
	@echo "targets: demo test init build push list doctor local dev shell check train-cloud registry registry-stop bench bases engine venv lock clean"

venv:
	@tools/ensure-venv.sh requirements.lock $(VENV)

venv-sdk3:
	@tools/ensure-venv.sh requirements-sdk3.lock $(VENV3)

engine:
	@tools/ensure-engine.sh

# The offline stand-ins for the prebuilt SageMaker XGBoost and PyTorch images (cached by input hash).
bases: venv engine
	@$(PY) build.py bases $(ARGS)

test: venv venv-sdk3 engine bases
	$(PY) -m pytest $(ARGS)

demo: venv engine bases
	$(PY) build.py build --base local $(if $(IMAGE),--image $(IMAGE))
	$(PY) -m local_mode demo $(if $(IMAGE),--image $(IMAGE))

init: venv
	$(PY) build.py init $(IMAGE) --framework $(FRAMEWORK) $(if $(FROM),--from $(FROM)) $(ARGS)

build: venv engine
	$(PY) build.py build $(build_opts) $(ARGS)

push: venv engine
	$(PY) build.py push $(push_opts) $(ARGS)

list: venv
	@$(PY) build.py list $(if $(REGION),--region $(REGION)) $(ARGS)

doctor: venv
	@$(PY) build.py doctor $(if $(REGION),--region $(REGION)) $(if $(REGISTRY),--registry $(REGISTRY)) $(ARGS)

local: venv engine
	$(PY) -m local_mode run $(if $(IMAGE),--image $(IMAGE)) $(ARGS)

# The inner loop: re-run the job on every save of the image's scripts, code mounted (no build), through
# Docker directly; prints how each metric changed. Ctrl-C ends. Build once first (make build BASE=local).
dev: venv engine
	$(PY) -m local_mode run --watch $(if $(IMAGE),--image $(IMAGE)) $(ARGS)

# A shell in the job's exact container (/opt/ml, SM_* environment; docs/debugging.md): make shell IMAGE=xgboost
shell: venv engine
	$(PY) -m local_mode run $(if $(IMAGE),--image $(IMAGE)) --shell $(ARGS)

# The SageMaker-contract check of any training image: make check IMAGE=xgboost (or IMAGE=<any image reference>)
check: venv engine
	$(PY) build.py check $(if $(IMAGE),$(IMAGE),$(error make check needs IMAGE=<name or image reference>)) $(ARGS)

train-cloud: venv
	$(PY) -m local_mode run --cloud $(if $(IMAGE),--image $(IMAGE)) $(if $(REGION),--region $(REGION)) $(ARGS)

# A registry on 127.0.0.1:$(PORT) to push to without an AWS account: make registry; make build push BASE=local
# REGISTRY=127.0.0.1:5000/smkit
PORT ?= 5000
registry: engine
	@PORT=$(PORT) tools/local-registry.sh start

registry-stop:
	@PORT=$(PORT) tools/local-registry.sh stop

bench: venv venv-sdk3 engine bases
	$(PY) -m bench $(ARGS)

# Re-pin every dependency from pyproject.toml (run after changing it).
lock:
	rm -rf /tmp/smkit-lock && $(PYTHON) -m venv /tmp/smkit-lock
	/tmp/smkit-lock/bin/pip install -q ".[train,test]" "sagemaker>=2.257.7,<3"  # .venv: SDK v2; .venv-sdk3: v3
	/tmp/smkit-lock/bin/pip freeze --exclude smkit | sed '1i # Exact versions for .venv; regenerate with `make lock`.' > requirements.lock
	rm -rf /tmp/smkit-lock && $(PYTHON) -m venv /tmp/smkit-lock
	/tmp/smkit-lock/bin/pip install -q "sagemaker>=3,<4" "docker>=7.1,<8" "rich>=13.7"
	/tmp/smkit-lock/bin/pip freeze | sed '1i # Exact versions for .venv-sdk3 (SageMaker SDK v3); regenerate with `make lock`.' > requirements-sdk3.lock
	rm -rf /tmp/smkit-lock

clean:
	rm -rf build .pytest_cache local_mode/runs
	find . -name __pycache__ -prune -exec rm -rf {} +
