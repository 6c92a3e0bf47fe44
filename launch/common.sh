# Shared helpers of the launch scripts (sourced, not run).
#
# Every script parses its arguments, checks them, prints what it is going to do, and then runs
# each command through `run`, which prints the command (shell-quoted, prefixed with "+ ") before
# running it. With --dry-run, `run` only prints: the printed lines are exactly the commands a real
# run executes, and can be pasted into a shell.

KDT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0

die() {
  echo "$(basename "$0"): error: $*" >&2
  echo "Run '$(basename "$0") --help' for usage." >&2
  exit 2
}

usage() {
  # Prints the comment block at the top of the running script (after the #! line).
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

quote() {
  # Shell-quotes each argument (single quotes where needed) and joins them with spaces.
  local out="" arg sq="'" esc="'\\''"
  for arg in "$@"; do
    if [[ -n "$arg" && "$arg" =~ ^[-A-Za-z0-9_./=:,@%+]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//$sq/$esc}' "
    fi
  done
  printf '%s' "${out% }"
}

run() {
  echo "+ $(quote "$@")"
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@"
  fi
}

need_value() {
  # need_value FLAG VALUE: the flag's value must be present and not another flag.
  if [[ -z "${2:-}" || "$2" == --* ]]; then
    die "$1 needs a value"
  fi
}

check_name() {
  # TPU names: lower-case letters, digits and hyphens, starting with a letter (GCE resource rule).
  [[ "$1" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name '$1' is not a valid TPU name (lower-case letters, digits and '-', starting with a letter)"
}

check_zone() {
  [[ "$1" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$1' does not look like a zone (e.g. us-central2-b)"
}

check_gcloud() {
  if [[ "$DRY_RUN" == 0 ]] && ! command -v gcloud > /dev/null; then
    die "gcloud not found; install the Google Cloud CLI (or use --dry-run to only print the commands)"
  fi
}

gcloud_scope() {
  # The --zone/--project flags every gcloud TPU command takes.
  GCLOUD_SCOPE=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    GCLOUD_SCOPE+=("--project=$PROJECT")
  fi
}
