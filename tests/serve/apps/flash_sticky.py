"""`@modal.experimental.http_server` with two containers: requests carrying the same
`Modal-Session-Id` reach the same container."""

import modal
import modal.experimental

app = modal.App("ferry-flash-sticky")

SERVER = r'''
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["MODAL_TASK_ID"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
'''


@app.cls(image=modal.Image.debian_slim(), min_containers=2, scaledown_window=30)
@modal.experimental.http_server(port=8000, proxy_regions=["us-east"], startup_timeout=60)
class Server:
    @modal.enter()
    def start(self):
        import subprocess
        import sys

        subprocess.Popen([sys.executable, "-c", SERVER])
