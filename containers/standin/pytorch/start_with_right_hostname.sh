#!/bin/bash
# Stand-in for the ENTRYPOINT script of the prebuilt PyTorch training images
# (aws/deep-learning-containers pytorch/training/docker/build_artifacts/start_with_right_hostname.sh).
# The real one compiles an LD_PRELOAD shim that makes gethostname() return the SageMaker host name
# (jq + gcc) and then runs `LD_PRELOAD=/libchangehostname.so train`; Docker sets the hostname right
# already, so the stand-in skips the shim. What a job can notice is kept: `train` runs as a CHILD of this
# bash, which stays PID 1 (no exec), so SIGTERM sent to the container (StopTrainingJob, spot) reaches a
# bash without a handler and is dropped; any other command is eval'ed.
if [[ "$1" = "train" ]]; then
     train
else
     eval "$@"
fi
