#!/bin/bash
# One flow pipeline spread over a Slurm job array: task i runs `flow run --unit i --units N`,
# the units dealt to worker i, round-robin in priority order. Tasks share the pipeline, inputs and
# output folder on a shared file system; each writes only its own units' files and commit records.
#
#   sbatch docs/slurm-array.sh /shared/pipeline.toml
#
# A task that fails with a retryable exit code (75: a full disk or an I/O error; 130: interrupted,
# e.g. preempted) requeues itself up to 3 times; the requeued task skips the units already
# committed. Exit codes 1 and 2 (a failure that would repeat, bad input) end the task.
#SBATCH --job-name=flow-daily
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=4G
#SBATCH --requeue
#SBATCH --output=flow-daily-%A_%a.log
set -u

pipeline=${1:?usage: sbatch slurm-array.sh PIPELINE.toml}

flow run \
    --mem-budget 3GiB \
    --threads "${SLURM_CPUS_PER_TASK:-4}" \
    --retries 2 \
    --unit "$SLURM_ARRAY_TASK_ID" \
    --units "$SLURM_ARRAY_TASK_COUNT" \
    --spill-dir "${TMPDIR:-/tmp}" \
    --report "flow-daily-${SLURM_ARRAY_TASK_ID}.json" \
    "$pipeline"
code=$?

if { [ "$code" -eq 75 ] || [ "$code" -eq 130 ]; } && [ "${SLURM_RESTART_COUNT:-0}" -lt 3 ]; then
    echo "flow exited with $code: requeueing task $SLURM_ARRAY_TASK_ID" >&2
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$code"
