#!/usr/bin/env bash
# Knative's Sequence walkthrough (examples/sequence.yaml): Broker → Trigger →
# three-step Sequence → reply into the Broker → Trigger → event display.
source "$(dirname "$0")/lib.sh"
start_spate examples/sequence.yaml
echo; "$spate" get sequences; echo; "$spate" get triggers; echo
for i in 1 2 3; do
  "$spate" send --broker default --type dev.example.ping --data "{\"id\":$i,\"message\":\"Hello world!\"}"
done
sleep 1
echo; echo "Each event above went through the three steps in order (\"Handled by 0, 1, 2\") and came back"
echo "through the Broker as samples.http.mod3. Stop: Ctrl-C."
