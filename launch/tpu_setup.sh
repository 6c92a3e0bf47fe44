#!/usr/bin/env bash
# Copies this repository to every worker of a TPU VM and installs kdt there in a virtualenv.
#
# Usage:
#   launch/tpu_setup.sh --name NAME --zone ZONE [--project PROJECT] [--dry-run]
#
# What it does, on every worker (--worker=all):
#   1. packs the repository (tracked and untracked files; .git and .gitignore'd files left out),
#   2. copies the archive to ~/kdt-src.tar.gz and unpacks it into ~/kdt (replacing an old copy),
#   3. creates the virtualenv ~/kdt-venv and runs `pip install -e ~/kdt[gcs] jax[tpu]`
#      (gcsfs lets the gs:// workdir's directories be listed and created; Orbax writes the arrays).
# Re-run it after changing the code: the workdir lives in GCS, not on the workers.
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

ARCHIVE="${TMPDIR:-/tmp}/kdt-src-$NAME.tar.gz"
REMOTE_SETUP='set -e
rm -rf ~/kdt && mkdir -p ~/kdt && tar -xzf ~/kdt-src.tar.gz -C ~/kdt
if [ ! -x ~/kdt-venv/bin/python ]; then
  python3 -m venv ~/kdt-venv || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv ~/kdt-venv; }
fi
~/kdt-venv/bin/pip install -q -U pip
~/kdt-venv/bin/pip install -q -e "$HOME/kdt[gcs]" "jax[tpu]"
~/kdt-venv/bin/python -c "import kdt, jax; print(\"kdt installed; jax\", jax.__version__)"'

echo "Setting up TPU '$NAME' in $ZONE: copy $KDT_REPO to ~/kdt on every worker, venv ~/kdt-venv, pip install -e."
run tar --exclude-vcs --exclude-vcs-ignores -czf "$ARCHIVE" -C "$KDT_REPO" .
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:kdt-src.tar.gz" "${GCLOUD_SCOPE[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all "--command=$REMOTE_SETUP"
echo "Next: launch/tpu_run.sh --name $NAME --zone $ZONE$([[ -n $PROJECT ]] && echo " --project $PROJECT") --config configs/<name>.py --workdir gs://<bucket>/<run>"
