#!/bin/bash
# Stand-in for the ENTRYPOINT script of the prebuilt PyTorch training images, which fixes the hostname
# that SageMaker reports before running the command (`train`). Docker sets the hostname right already,
# so the stand-in only runs the command; it exists so that derived images keep an ENTRYPOINT exactly
# as they do on the prebuilt base.
exec "$@"
