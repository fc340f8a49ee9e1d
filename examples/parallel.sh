#!/usr/bin/env bash
# Knative's Parallel walkthrough (examples/parallel.yaml): Broker → Trigger →
# Parallel with even/odd filter branches → global reply to the event display.
source "$(dirname "$0")/lib.sh"
start_spate examples/parallel.yaml
echo; "$spate" get parallels; echo
for n in 1 2 3 4; do
  "$spate" send --broker default --type dev.example.number --data "{\"n\":$n}"
done
sleep 1
echo; echo "Each number above reached exactly one branch: even ones say \"we are even!\", odd ones"
echo "\"we are odd!\". Stop: Ctrl-C."
