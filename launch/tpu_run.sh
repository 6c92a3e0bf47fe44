#!/usr/bin/env bash
# Runs one kdt experiment on every worker of a TPU VM / pod slice, with a GCS workdir.
#
# Usage:
#   launch/tpu_run.sh --name NAME --zone ZONE [--project PROJECT] [--dry-run]
#                     --config configs/FILE.py --workdir gs://BUCKET/PATH [--config.a.b=value ...]
#
# Example:
#   launch/tpu_run.sh --name kdt-pod --zone us-central2-b \
#     --config configs/imagenet_resnet50.py --workdir gs://my-bucket/kdt/resnet50 \
#     --config.data.tfds_dir=gs://my-bucket/tensorflow_datasets
#
# Every worker runs the same command with KDT_DISTRIBUTED=1, so kdt calls
# jax.distributed.initialize() (the workers find each other) and each worker loads only its rows
# of every batch. The workdir must be in GCS so that all workers share it. Re-running the same
# command resumes the run from its latest checkpoint (e.g. after a preemption).
set -euo pipefail
source "$(dirname "$0")/common.sh"


NAME="" ZONE="" PROJECT="" CONFIG="" WORKDIR=""
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" "${2:-}"; NAME="$2"; shift 2 ;;
    --name=*) NAME="${1#*=}"; shift ;;
    --zone) need_value "$1" "${2:-}"; ZONE="$2"; shift 2 ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --project) need_value "$1" "${2:-}"; PROJECT="$2"; shift 2 ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --config) need_value "$1" "${2:-}"; CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --workdir) need_value "$1" "${2:-}"; WORKDIR="$2"; shift 2 ;;
    --workdir=*) WORKDIR="${1#*=}"; shift ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) need_value "$1" "${2:-}"; OVERRIDES+=("$1=$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$CONFIG" ]] || die "--config is required (a file in configs/, relative to the repository)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (gs://BUCKET/PATH)"
check_name "$NAME"
check_zone "$ZONE"
[[ "$CONFIG" != /* ]] || die "--config '$CONFIG' must be relative to the repository (it runs from ~/kdt on the workers)"
[[ -f "$KDT_REPO/${CONFIG%%:*}" ]] || die "--config '${CONFIG%%:*}' not found in $KDT_REPO"
[[ "$WORKDIR" =~ ^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/.*)?$ ]] ||
  die "--workdir '$WORKDIR' must be a gs://BUCKET/PATH URL: every worker of the pod reads and writes it"
check_gcloud
gcloud_scope

# The fixed part is written out (so the remote shell expands ~); the user's arguments are quoted.
REMOTE="cd ~/kdt && KDT_DISTRIBUTED=1 ~/kdt-venv/bin/python -m kdt.main $(quote "--config=$CONFIG" \
  "--workdir=$WORKDIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")"

echo "Running kdt on every worker of TPU '$NAME' ($ZONE): config $CONFIG, workdir $WORKDIR."
echo "The workers share the workdir; re-run this exact command to resume after a preemption."
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all "--command=$REMOTE"
