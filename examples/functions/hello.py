"""A Python example function for Spate Services (standard library only):
listens on $PORT and answers every request with a small JSON document;
`?sleep=MS` holds the request. Used by `spate bench --target service`."""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if "sleep=" in self.path:
            threading.Event().wait(int(self.path.split("sleep=")[1].split("&")[0]) / 1000)
        out = json.dumps({"pid": os.getpid(), "revision": os.environ.get("K_REVISION"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = do_GET


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
