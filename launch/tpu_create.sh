#!/usr/bin/env bash
# Creates a Cloud TPU VM (a single host such as v4-8, or a pod slice such as v4-32).
#
# Usage:
#   launch/tpu_create.sh --name NAME --zone ZONE --accelerator-type TYPE
#                        [--version RUNTIME] [--project PROJECT] [--spot] [--dry-run]
#
# Example:
#   launch/tpu_create.sh --name kdt-pod --zone us-central2-b --accelerator-type v4-32 --spot
#
# --version defaults to the runtime Google documents for the TPU generation
# (v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base otherwise). --spot asks for a Spot TPU: cheaper,
# but it can be preempted at any time; kdt runs resume (see README "Running on a TPU pod").
set -euo pipefail
source "$(dirname "$0")/common.sh"


NAME="" ZONE="" TYPE="" VERSION="" PROJECT="" SPOT=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" "${2:-}"; NAME="$2"; shift 2 ;;
    --name=*) NAME="${1#*=}"; shift ;;
    --zone) need_value "$1" "${2:-}"; ZONE="$2"; shift 2 ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --accelerator-type) need_value "$1" "${2:-}"; TYPE="$2"; shift 2 ;;
    --accelerator-type=*) TYPE="${1#*=}"; shift ;;
    --version) need_value "$1" "${2:-}"; VERSION="$2"; shift 2 ;;
    --version=*) VERSION="${1#*=}"; shift ;;
    --project) need_value "$1" "${2:-}"; PROJECT="$2"; shift 2 ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$TYPE" ]] || die "--accelerator-type is required (e.g. v4-8, v4-32, v5p-16, v6e-8)"
check_name "$NAME"
check_zone "$ZONE"
[[ "$TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "--accelerator-type '$TYPE' does not look like a TPU type (e.g. v4-8, v4-32, v5litepod-16, v6e-8)"
if [[ -z "$VERSION" ]]; then
  case "$TYPE" in
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi
check_gcloud
gcloud_scope

echo "Creating TPU '$NAME' ($TYPE, runtime $VERSION) in $ZONE$([[ $SPOT == 1 ]] && echo ' as a Spot TPU')."
CMD=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}" "--accelerator-type=$TYPE"
     "--version=$VERSION")
if [[ "$SPOT" == 1 ]]; then
  CMD+=(--spot)
fi
run "${CMD[@]}"
echo "Next: launch/tpu_setup.sh --name $NAME --zone $ZONE$([[ -n $PROJECT ]] && echo " --project $PROJECT")"
