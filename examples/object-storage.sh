#!/usr/bin/env bash
# An upload fires the function (examples/object-storage.yaml): moto stands in
# for S3 on 127.0.0.1:5000 (pip install 'moto[server]'); an image uploaded to
# the bucket reaches the thumbnailer through an IntegrationSource and a Broker.
source "$(dirname "$0")/lib.sh"
command -v moto_server >/dev/null || { echo "needs moto: pip install 'moto[server]'" >&2; exit 1; }
moto_server -H 127.0.0.1 -p 5000 >/dev/null 2>&1 &
moto=$!
until curl -s -o /dev/null http://127.0.0.1:5000/; do sleep 0.1; done
curl -s -X PUT http://127.0.0.1:5000/uploads >/dev/null
rm -rf /tmp/spate-thumbnails
start_spate examples/object-storage.yaml
trap 'kill $moto 2>/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
# A 320x200 gradient as a binary PPM, uploaded to the bucket.
python3 -c "
import sys
w, h = 320, 200
px = bytes(v for y in range(h) for x in range(w) for v in (x * 255 // w, y * 255 // h, 128))
sys.stdout.buffer.write(b'P6\n%d %d\n255\n' % (w, h) + px)" |
  curl -s -X PUT --data-binary @- -H 'content-type: image/x-portable-pixmap' http://127.0.0.1:5000/uploads/photo.ppm
until [ -f /tmp/spate-thumbnails/photo.ppm ]; do sleep 0.1; done
sleep 1
echo; "$spate" get sources
echo; echo "== spate logs service/thumbnailer"; "$spate" logs service/thumbnailer
echo; echo "== spate logs service/event-display"; "$spate" logs service/event-display
echo; echo "Thumbnail header: $(head -n 2 /tmp/spate-thumbnails/photo.ppm | tr "\n" " ")"
echo "Objects left in the bucket: $(curl -s 'http://127.0.0.1:5000/uploads?list-type=2' | grep -c '<Key>' || true)"
