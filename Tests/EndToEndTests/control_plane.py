"""A mock Kaizen control plane for the tests (HTTPS on loopback, certificate from the test CA).

POST /v1/verdicts: checks `Authorization: Bearer $MOCK_API_KEY` (401 otherwise), the JSON content type and
the action shape (400 otherwise), prints `RECEIVED <client port> <event_id>` and answers 200.
Prints "PORT <n>" once it listens.
"""
import argparse
import http.server
import json
import os
import socketserver
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/verdicts":
            return self.reply(404, {"error": "not found"})
        if self.headers.get("Authorization") != "Bearer " + os.environ["MOCK_API_KEY"]:
            return self.reply(401, {"error": "invalid API key"})
        if self.headers.get("Content-Type") != "application/json":
            return self.reply(400, {"error": "content type"})
        try:
            action = json.loads(body)
            assert action["schema_version"] == "1"
            assert action["action"]["kind"] == "connect"
            assert action["action"]["metadata"]["source"] == "egress"
            assert action["verdict"]["decision"] in ("allow", "block")
            event_id = action["action"]["metadata"]["event_id"]
        except Exception as error:  # noqa: BLE001 - any shape problem is a 400
            return self.reply(400, {"error": f"bad action: {error!r}"})
        print(f"RECEIVED {self.client_address[1]} {event_id}", flush=True)
        self.reply(200, {"status": "ok"})


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    Server.allow_reuse_address = True
    server = Server(("127.0.0.1", args.port), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
