"""A small edge app: HTTP on $PORT, `/health` answers 200, `/` tells who it is; logs to stdout and stderr."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok"
        else:
            files = Path(os.environ["FIELDGATE_FILES"])
            body = json.dumps({
                "pid": os.getpid(), "version": os.environ.get("APP_VERSION", ""),
                "instance": os.environ["FIELDGATE_INSTANCE"], "password": os.environ.get("DB_PASSWORD", ""),
                "file": (files / "conf/app.ini").read_text() if (files / "conf/app.ini").exists() else "",
                "files_dir": os.environ.get("FIELDGATE_FILES_DIR", ""),
            }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print("request", self.path, file=sys.stderr, flush=True)


print(f"web app {os.environ.get('APP_VERSION', '')} listening on {os.environ['PORT']}", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
