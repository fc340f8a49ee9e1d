#!/usr/bin/env bash
# Functions as Services (examples/serving.yaml): an object-created event reaches
# the thumbnailer (started from zero), which writes a thumbnail and replies; the
# event display, also a Service, prints both events.
source "$(dirname "$0")/lib.sh"
start_spate examples/serving.yaml
bucket=$(mktemp -d)
# A 320x200 gradient as a binary PPM: the "uploaded object".
python3 -c "
import sys
w, h = 320, 200
px = bytes(v for y in range(h) for x in range(w) for v in (x * 255 // w, y * 255 // h, 128))
sys.stdout.buffer.write(b'P6\n%d %d\n255\n' % (w, h) + px)" > "$bucket/photo.ppm"
echo; "$spate" get ksvc; echo; "$spate" get revisions; echo
"$spate" send --broker default --type com.example.object.created --source /buckets/demo \
  --data "{\"bucket\":\"$bucket\",\"key\":\"photo.ppm\"}"
until [ -f "$bucket/thumbnails/photo.ppm" ]; do sleep 0.1; done
sleep 1
echo; echo "== spate logs service/thumbnailer"; "$spate" logs service/thumbnailer
echo; echo "== spate logs service/event-display"; "$spate" logs service/event-display
echo; echo "Thumbnail header: $(head -n 2 "$bucket/thumbnails/photo.ppm" | tr "\n" " ")"
"$spate" get revisions
rm -rf "$bucket"
