# Sourced by the example scripts: builds Spate, starts `spate serve -f <manifest>`
# on a fresh data directory (127.0.0.1:8080 and :8081), waits until it answers,
# and stops it on exit. Sets $spate to the binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p spate
spate=target/release/spate
start_spate() {
  data=$(mktemp -d)
  "$spate" serve -f "$1" --data-dir "$data" &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
  until "$spate" get brokers >/dev/null 2>&1; do
    kill -0 $pid 2>/dev/null || { echo "spate serve exited; see above" >&2; exit 1; }
    sleep 0.1
  done
}
