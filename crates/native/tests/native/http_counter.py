# A small HTTP server with its state in memory: GET /count adds one to a counter and returns
# it. Binds 127.0.0.1 port 0, prints the port, then "ready". Used by tests/cr_programs.rs.
import http.server
import os
import sys
import threading

# fds inherited from the test runner (e.g. a jobserver pipe) are not ours.
os.closerange(3, 1 << 16)

count = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        global count
        if self.path != "/count":
            self.send_error(404)
            return
        with lock:
            count += 1
            n = count
        body = f"{n}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1])
print("ready", flush=True)
server.serve_forever()
