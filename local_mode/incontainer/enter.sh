#!/bin/sh
# The job's container, entered by hand (run --shell / --exec): the SM_* environment the image's toolkit
# would hand the script, /opt/ml/code as the working directory, and what the toolkit would run, printed.
#   sh /opt/smkit/enter.sh            an interactive shell (bash if the image has it)
#   SMKIT_EXEC=COMMAND sh /opt/smkit/enter.sh
#                                     COMMAND through sh -c; its exit code is the container's (in the
#                                     environment: the PyTorch DLC's ENTRYPOINT evals its arguments)
# The toolkit's own Python (the interpreter in `train`'s #! line) computes the environment.
train_path=$(command -v train 2>/dev/null)
python=
if [ -n "$train_path" ]; then
    python=$(head -n 1 "$train_path" | sed -n 's/^#![[:space:]]*//p')
fi
[ -n "$python" ] || python=$(command -v python3 || command -v python)
jobenv=$($python /opt/smkit/jobenv.py) || { echo "smkit: could not compute the job's environment" >&2; exit 70; }
eval "$jobenv"
cd /opt/ml/code 2>/dev/null || cd /
if [ -n "${SMKIT_EXEC:-}" ]; then
    command=$SMKIT_EXEC
    unset SMKIT_EXEC
    exec sh -c "$command"
fi
printf '%s\n' "$SMKIT_BANNER" >&2
if command -v bash >/dev/null 2>&1; then
    exec bash --norc -i
fi
exec sh -i
