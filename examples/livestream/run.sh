#!/usr/bin/env bash
# The live-streaming AI scenario, end to end (see README.md beside this script):
#   ./examples/livestream/run.sh [--seconds N] [--peak RATE] [--out DIR]
# Starts a Kafka-protocol broker unless one answers (SPATE_KAFKA, default 127.0.0.1:19092), makes
# the example's Python environment on first run (.venv beside this script), builds Spate and the
# highlight function (or uses SPATE_BIN and the livestream-highlight binary beside it), starts
# `spate serve -f livestream.yaml`, drives bursty traffic and writes the report to DIR
# (default ./livestream-report): summary.json, report.png, report.html.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=60 peak=2000 out=livestream-report
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --peak) peak=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (use --seconds N, --peak RATE, --out DIR)" >&2; exit 2 ;;
  esac
done
out=$(mkdir -p "$out" && cd "$out" && pwd)
kafka=${SPATE_KAFKA:-127.0.0.1:19092}
answers() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# 1. Kafka: the one given, or tansu from ../shared/peers as .ci/run starts it.
if ! answers "$kafka"; then
  peers="$root/../shared/peers/start"
  [ -x "$peers" ] || { echo "no Kafka at $kafka and no $peers to start one; set SPATE_KAFKA=host:port" >&2; exit 1; }
  echo "== starting a Kafka-protocol broker (tansu) on $kafka"
  "$peers" kafka "${kafka##*:}"
fi

# 2. The functions' Python environment (first run only).
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import better_profanity, vaderSentiment, confluent_kafka, matplotlib" 2>/dev/null; then
  echo "== creating $venv (better-profanity, vaderSentiment, confluent-kafka, matplotlib)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
fi

# 3. Spate and the compiled highlight function.
cd "$root"
if [ -n "${SPATE_BIN:-}" ]; then
  spate=$SPATE_BIN
else
  cargo build --release -q -p spate -p livestream-highlight
  spate=$root/target/release/spate
fi
highlight=$(dirname "$spate")/livestream-highlight
if [ ! -x "$highlight" ]; then  # SPATE_BIN given: build the function with the same profile
  case "$(basename "$(dirname "$spate")")" in release) profile=release ;; *) profile=dev ;; esac
  cargo build -q -p livestream-highlight --profile "$profile"
fi

# 4. Topics, the manifest with this machine's Kafka and binary, and Spate.
"$venv/bin/python" "$here/topics.py" "$kafka"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
sed -e "s|127.0.0.1:19092|$kafka|g" -e "s|target/release/livestream-highlight|$highlight|" \
  "$here/livestream.yaml" > "$work/livestream.yaml"
ports=$("$venv/bin/python" -c "
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(('127.0.0.1', 0))
print(' '.join(str(x.getsockname()[1]) for x in s))")
read -r data_port admin_port <<<"$ports"
"$spate" serve -f "$work/livestream.yaml" --data-dir "$work/data" --listen "127.0.0.1:$data_port" \
  --admin-listen "127.0.0.1:$admin_port" > "$out/spate.log" 2>&1 &
pid=$!
admin="http://127.0.0.1:$admin_port"
until "$spate" get sources --server "$admin" >/dev/null 2>&1; do
  kill -0 $pid 2>/dev/null || { echo "spate serve exited; see $out/spate.log" >&2; tail -20 "$out/spate.log" >&2; exit 1; }
  sleep 0.1
done
"$spate" get all --server "$admin"

# 5. The scenario.
"$venv/bin/python" "$here/drive.py" --kafka "$kafka" --admin "$admin" --seconds "$seconds" --peak "$peak" --out "$out"
