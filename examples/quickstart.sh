#!/usr/bin/env bash
# Runs `spate serve -f examples/quickstart.yaml` on the embedded log, sends a
# few events with `spate send`, and shows them arriving at the built-in event
# display (printed by spate serve below). Uses 127.0.0.1:8080 and :8081.
source "$(dirname "$0")/lib.sh"
start_spate examples/quickstart.yaml
echo; "$spate" get brokers; echo; "$spate" get triggers; echo
"$spate" send --broker default --type com.example.order.created --data '{"order":42}'
"$spate" send --broker default --type com.example.payment.received -e region=eu --data '{"amount":"9.50"}'
"$spate" send --broker default --type com.example.payment.received -e region=us --data '{"amount":"3.00"}'
"$spate" send --broker default --type com.example.order.shipped --count 3 --rate 10 --data '{"order":42}'
sleep 1
echo; echo "Each event above was printed once per matching trigger: orders (type prefix com.example.order.),"
echo "eu-payments (type and region=eu) and all (every event). Stop: Ctrl-C."
