"""`@modal.experimental.http_server`: a class whose containers run their own HTTP server."""

import modal
import modal.experimental

PORT = 8000
app = modal.App("ferry-flash")

SERVER = r'''
import http.server, os, socket

class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Served-By", socket.gethostname())
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(f"GET {self.path} from {os.environ['MODAL_TASK_ID']}".encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(b"POST " + self.path.encode() + b" " + body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
'''


@app.cls(image=modal.Image.debian_slim(), scaledown_window=30)
@modal.experimental.http_server(port=PORT, proxy_regions=["us-east"], startup_timeout=60)
class Server:
    @modal.enter()
    def start(self):
        import subprocess
        import sys

        subprocess.Popen([sys.executable, "-c", SERVER])
