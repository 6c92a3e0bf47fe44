#!/usr/bin/env bash
# Runs one kdt experiment on this machine: one process, or N processes that form one JAX
# distributed run over localhost (the same code path as a multi-host TPU pod, on CPU).
#
# Usage:
#   launch/local.sh --config configs/FILE.py --workdir DIR [--config.a.b=value ...]
#                   [--processes N] [--devices N] [--port PORT] [--python PYTHON] [--dry-run]
#
# Options:
#   --processes N  start N processes with KDT_DISTRIBUTED=1 and KDT_COORDINATOR=127.0.0.1:PORT,
#                  KDT_NUM_PROCESSES=N, KDT_PROCESS_ID=i; each loads only its rows of every batch.
#                  Process 0 prints to the terminal, process i > 0 to DIR/logs/process_i.log.
#                  If one process fails the others are stopped (SIGTERM, then SIGKILL after 30 s).
#   --devices N    give each process N fake CPU devices (XLA_FLAGS=
#                  --xla_force_host_platform_device_count=N, JAX_PLATFORMS=cpu), e.g. to try data
#                  parallelism on a laptop.
#   --port PORT    coordinator port (default: a free port).
#   --python PY    the interpreter (default: $PYTHON, else python3).
#
# Examples:
#   launch/local.sh --config configs/quickstart.py --workdir /tmp/kdt_quickstart
#   launch/local.sh --config configs/quickstart.py --workdir /tmp/kdt_2proc --processes 2
# Ctrl-C (or SIGTERM) is passed on to every process: each checkpoints its current step and stops;
# the same command resumes.
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONFIG="" WORKDIR="" PROCESSES=1 DEVICES=0 PORT="" PY="${PYTHON:-python3}"
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) need_value "$1" "${2:-}"; CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --workdir) need_value "$1" "${2:-}"; WORKDIR="$2"; shift 2 ;;
    --workdir=*) WORKDIR="${1#*=}"; shift ;;
    --config.*=*) OVERRIDES+=("$1"); shift ;;
    --config.*) need_value "$1" "${2:-}"; OVERRIDES+=("$1=$2"); shift 2 ;;
    --processes) need_value "$1" "${2:-}"; PROCESSES="$2"; shift 2 ;;
    --processes=*) PROCESSES="${1#*=}"; shift ;;
    --devices) need_value "$1" "${2:-}"; DEVICES="$2"; shift 2 ;;
    --devices=*) DEVICES="${1#*=}"; shift ;;
    --port) need_value "$1" "${2:-}"; PORT="$2"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --python) need_value "$1" "${2:-}"; PY="$2"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ -f "${CONFIG%%:*}" ]] || die "--config '${CONFIG%%:*}' not found"
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "--processes '$PROCESSES' must be a positive integer"
[[ "$DEVICES" =~ ^[0-9]+$ ]] || die "--devices '$DEVICES' must be a non-negative integer (0: the machine's own devices)"
if [[ -n "$PORT" ]]; then
  [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1024 && "$PORT" -le 65535 ]] ||
    die "--port '$PORT' must be a number in [1024, 65535]"
fi
if [[ "$DRY_RUN" == 0 ]] && ! command -v "$PY" > /dev/null; then
  die "Python interpreter '$PY' not found (set --python or \$PYTHON)"
fi

MAIN=("$PY" -m kdt.main "--config=$CONFIG" "--workdir=$WORKDIR" "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
BASE_ENV=()
if [[ "$DEVICES" -gt 0 ]]; then
  BASE_ENV+=(JAX_PLATFORMS=cpu
             "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES")
fi

if [[ "$PROCESSES" == 1 ]]; then
  echo "Running kdt in one process$([[ $DEVICES -gt 0 ]] && echo " with $DEVICES CPU devices"): config $CONFIG, workdir $WORKDIR."
  if [[ ${#BASE_ENV[@]} -gt 0 ]]; then
    run env "${BASE_ENV[@]}" "${MAIN[@]}"
  else
    run "${MAIN[@]}"
  fi
  exit 0
fi

if [[ -z "$PORT" ]]; then
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || true)"
  [[ "$PORT" =~ ^[0-9]+$ ]] || PORT=12355
fi
LOG_DIR="$WORKDIR/logs"
echo "Running kdt in $PROCESSES processes on localhost (coordinator 127.0.0.1:$PORT): config $CONFIG, workdir $WORKDIR."
echo "Process 0 prints here; process i > 0 logs to $LOG_DIR/process_i.log."
[[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOG_DIR"

PIDS=()
STOP_GRACE_SECONDS="${KDT_STOP_GRACE_SECONDS:-30}"
stop_all() {
  # SIGTERM first (kdt checkpoints its current step and exits); a process still running after the
  # grace period is stuck (e.g. in a collective with a dead peer) and gets SIGKILL.
  local pid alive t
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -TERM "$pid" 2> /dev/null || true
  done
  for ((t = 0; t < STOP_GRACE_SECONDS; t++)); do
    alive=0
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
      if kill -0 "$pid" 2> /dev/null; then alive=1; fi
    done
    [[ "$alive" == 1 ]] || return 0
    sleep 1
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -KILL "$pid" 2> /dev/null || true
  done
}
trap 'stop_all' INT TERM

for ((i = 0; i < PROCESSES; i++)); do
  CMD=(env "${BASE_ENV[@]+"${BASE_ENV[@]}"}" KDT_DISTRIBUTED=1 "KDT_COORDINATOR=127.0.0.1:$PORT"
       "KDT_NUM_PROCESSES=$PROCESSES" "KDT_PROCESS_ID=$i" "${MAIN[@]}")
  if [[ "$i" == 0 ]]; then
    echo "+ $(quote "${CMD[@]}") &"
    [[ "$DRY_RUN" == 1 ]] || { "${CMD[@]}" & PIDS+=($!); }
  else
    echo "+ $(quote "${CMD[@]}") > $(quote "$LOG_DIR/process_$i.log") 2>&1 &"
    [[ "$DRY_RUN" == 1 ]] || { "${CMD[@]}" > "$LOG_DIR/process_$i.log" 2>&1 & PIDS+=($!); }
  fi
done
[[ "$DRY_RUN" == 0 ]] || exit 0

# Wait for all; when one fails, stop the others (they would otherwise wait for it at the next
# collective until JAX's timeouts) and exit with the first failure's status.
STATUS=0
for ((k = 0; k < PROCESSES; k++)); do
  if wait -n; then
    continue
  else
    code=$?
    if [[ "$STATUS" == 0 ]]; then
      STATUS=$code
      echo "$(basename "$0"): a process exited with status $code; stopping the others." >&2
      stop_all
    fi
  fi
done
wait 2> /dev/null || true
exit "$STATUS"
