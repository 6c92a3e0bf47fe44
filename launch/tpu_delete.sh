#!/usr/bin/env bash
# Deletes a Cloud TPU VM (every worker). The GCS workdir is not touched.
#
# Usage:
#   launch/tpu_delete.sh --name NAME --zone ZONE [--project PROJECT] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"


NAME="" ZONE="" PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$1" "${2:-}"; NAME="$2"; shift 2 ;;
    --name=*) NAME="${1#*=}"; shift ;;
    --zone) need_value "$1" "${2:-}"; ZONE="$2"; shift 2 ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --project) need_value "$1" "${2:-}"; PROJECT="$2"; shift 2 ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
check_name "$NAME"
check_zone "$ZONE"
check_gcloud
gcloud_scope

echo "Deleting TPU '$NAME' in $ZONE (the GCS workdir is kept)."
run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet
