"""Knative's event-display as a Spate Service (standard library only): prints
every CloudEvent it receives (binary or structured mode) and answers 202.
Its output is shown by `spate logs service/event-display`."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.headers.get("content-type", "").startswith("application/cloudevents+json"):
            event = json.loads(body)
        else:
            event = {k[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
            event["data"] = body.decode("utf-8", "replace")
        lines = ["☁️  cloudevents.Event"] + [f"  {k}: {v}" for k, v in sorted(event.items()) if k != "data"]
        lines.append(f"  data: {event.get('data', '')}")
        print("\n".join(lines), flush=True)
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
