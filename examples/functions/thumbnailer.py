"""An object-storage function for Spate Services (standard library only).

Two ways in:
- a `dev.knative.eventing.aws-s3` CloudEvent from an IntegrationSource `aws.s3`
  (an upload to a bucket): the data is the object itself, the `key` extension
  its name; the thumbnail is written to `$THUMBNAIL_DIR/<key>`;
- a `com.example.object.created` CloudEvent whose JSON data names a local
  object ({"bucket": "<directory>", "key": "<name>.ppm"}); the thumbnail is
  written to `<bucket>/thumbnails/<key>`.
The image (binary PPM, P6) is scaled down to fit THUMBNAIL_SIZE (default 32)
pixels, and the reply is a `com.example.thumbnail.created` CloudEvent
describing the thumbnail. A bad object is answered with 400 (not retried: the
event itself is at fault)."""
import json
import os
import uuid
from urllib.parse import unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIZE = int(os.environ.get("THUMBNAIL_SIZE", "32"))


def read_ppm(path):
    with open(path, "rb") as f:
        return parse_ppm(f.read())


def parse_ppm(raw):
    fields, pos = [], 0
    while len(fields) < 4:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos) + 1
            continue
        end = pos
        while not raw[end:end + 1].isspace():
            end += 1
        fields.append(raw[pos:end])
        pos = end
    if fields[0] != b"P6" or int(fields[3]) != 255:
        raise ValueError("not an 8-bit binary PPM (P6) image")
    w, h = int(fields[1]), int(fields[2])
    return w, h, raw[pos + 1:pos + 1 + w * h * 3]


def scale(w, h, pixels):
    factor = max(1, -(-max(w, h) // SIZE))
    tw, th = max(1, w // factor), max(1, h // factor)
    out = bytearray()
    for y in range(th):
        for x in range(tw):
            i = ((y * factor) * w + x * factor) * 3
            out += pixels[i:i + 3]
    return tw, th, bytes(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, code, headers=None, body=b""):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            if self.headers.get("ce-type") == "dev.knative.eventing.aws-s3":
                # An uploaded object: its bytes are the data; it is named by the `key` extension.
                name = os.path.basename(unquote(self.headers.get("ce-key") or "object.ppm"))
                obj = {"bucket": self.headers.get("ce-bucket", ""), "key": name}
                w, h, pixels = parse_ppm(body)
                out_dir = os.environ["THUMBNAIL_DIR"]
                key = name
            else:
                obj = json.loads(body)
                w, h, pixels = read_ppm(os.path.join(obj["bucket"], obj["key"]))
                out_dir = os.path.join(obj["bucket"], "thumbnails")
                key = os.path.join("thumbnails", obj["key"])
            tw, th, thumb = scale(w, h, pixels)
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, os.path.basename(key)), "wb") as f:
                f.write(b"P6\n%d %d\n255\n" % (tw, th) + thumb)
        except (ValueError, KeyError, OSError, IndexError) as e:
            print(f"cannot make a thumbnail: {e}", flush=True)
            return self.answer(400, {"content-type": "text/plain"}, f"{e}\n".encode())
        print(f"thumbnail {key}: {w}x{h} -> {tw}x{th}", flush=True)
        reply = json.dumps({"bucket": obj["bucket"], "key": key, "width": tw, "height": th}).encode()
        self.answer(200, {
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-source": "/thumbnailer",
            "ce-type": "com.example.thumbnail.created",
            "ce-subject": key,
            "content-type": "application/json",
        }, reply)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
