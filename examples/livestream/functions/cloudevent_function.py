"""A tiny CloudEvents HTTP function server for the live-streaming example (standard library only).

`serve(handle)` listens on $PORT (Spate sets it for each Service instance), accepts a CloudEvent in
binary or structured content mode, and calls `handle(attributes, data)` with the context attributes
(a dict: "id", "type", ... and extensions) and the parsed JSON data. `handle` returns None (202, no
reply) or `(type, data)`: the reply event, sent back in binary mode with the comment's stream as its
`partitionkey` so that the KafkaSink keys the record by stream. A payload that is not JSON is a
client error (400): retrying would not help."""
import json
import os
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _event(headers, body):
    if (headers.get("content-type") or "").startswith("application/cloudevents+json"):
        ev = json.loads(body)
        return {k: v for k, v in ev.items() if k not in ("data", "data_base64")}, ev.get("data")
    attrs = {k[3:].lower(): v for k, v in headers.items() if k.lower().startswith("ce-")}
    return attrs, json.loads(body) if body else None


def serve(handle, source):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def answer(self, code, headers, body=b""):
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                attrs, data = _event(self.headers, body)
                result = handle(attrs, data)
            except (ValueError, KeyError, TypeError) as e:
                return self.answer(400, {"content-type": "text/plain"}, f"{e}\n".encode())
            if result is None:
                return self.answer(202, {})
            kind, out = result
            headers = {
                "ce-specversion": "1.0",
                "ce-id": str(uuid.uuid4()),
                "ce-source": source,
                "ce-type": kind,
                "content-type": "application/json",
            }
            stream = out.get("stream") if isinstance(out, dict) else None
            if stream:
                headers["ce-partitionkey"] = str(stream)
            self.answer(200, headers, json.dumps(out).encode())

    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
