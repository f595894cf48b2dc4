"""A mock Kaizen control plane for the tests (HTTPS on loopback, certificate from the test CA).

POST /v1/verdicts: checks `Authorization: Bearer $MOCK_API_KEY` (401 otherwise), the JSON content type and
the action shape (400 otherwise), prints `RECEIVED <client port> <event_id>` and answers 200; a gap record
(kind egress_gap) prints `GAP <event_id> <dropped_actions> <oldest_started_at> <newest_started_at>`.
Prints "PORT <n>" once it listens.

The test steers it through the file given with --mode-file, read on every request:
  ok (or missing)        as above
  unauthorized           401 for everything
  unavailable <seconds>  503 with Retry-After: <seconds>
  reject <event_id>...   400 for those events (printed as REJECTED <event_id>), the rest as usual
  close                  as ok, but every answer says Connection: close and the connection is closed after it
                         (HTTP/1.0 style, a keep-alive limit of one): requests pipelined behind it go unanswered
  fail <status> <event_id>  that status for that one event, every time (printed FAILED <status> <event_id>), the
                         rest as usual: a record the control plane cannot take (413) or chokes on (500)
  hang <event_id>        never answers that one event (printed HUNG <event_id> each time it arrives): holds the
                         request until the mode file no longer says hang (at most 60 s), then closes the connection
                         without an answer; requests pipelined behind it on its connection are never read. The rest
                         as usual: a record the control plane hangs on
  slow [seconds]         a slow control plane: each request prints HOLDING <event_id>, then waits that long
                         (without seconds: until the mode file no longer says slow, at most 60 s) and is
                         answered by the mode then in force

GET /v1/policy?agent=NAME (with --policy-dir DIR): serves DIR/NAME.json as it is on disk (malformed or not),
with an ETag of its SHA-256; 304 when If-None-Match matches; 404 when the file is missing; the mode file's
unauthorized and unavailable apply. Prints `POLICY <agent> <status>` after answering.
"""
import argparse
import hashlib
import http.server
import urllib.parse
import json
import os
import socketserver
import ssl
import sys
import threading
import time


OUTPUT_LOCK = threading.Lock()


def say(line):
    """One whole line per call: the proxy sends on several connections, so handler threads print at once."""
    with OUTPUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each response and send it in one write (flushed after every request), with Nagle off, as a
    # production server does; unbuffered, the header and body writes stall on delayed ACKs (40 ms each).
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self.mode()[:1] == ["close"]:
            self.send_header("Connection", "close")  # also sets close_connection: closed after this answer
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    mode_file = None
    policy_dir = None
    bodies_file = None
    timestamps = False

    def mode(self):
        try:
            with open(self.mode_file) as handle:
                return handle.read().split()
        except (OSError, TypeError):
            return ["ok"]

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        agent = urllib.parse.parse_qs(url.query).get("agent", [""])[0]
        status = self.answer_policy(url.path, agent)
        say(f"POLICY {agent} {status}")

    def answer_policy(self, path, agent):
        mode = self.mode()
        if mode and mode[0] == "unauthorized":
            self.reply(401, {"error": "key revoked"})
            return 401
        if mode and mode[0] == "unavailable":
            self.send_response(503)
            self.send_header("Retry-After", mode[1] if len(mode) > 1 else "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 503
        if path != "/v1/policy" or not self.policy_dir or not agent or "/" in agent:
            self.reply(404, {"error": "not found"})
            return 404
        if self.headers.get("Authorization") != "Bearer " + os.environ["MOCK_API_KEY"]:
            self.reply(401, {"error": "invalid API key"})
            return 401
        try:
            with open(os.path.join(self.policy_dir, agent + ".json"), "rb") as handle:
                body = handle.read()
        except OSError:
            self.reply(404, {"error": "no policy for this agent"})
            return 404
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return 304
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.bodies_file:
            with OUTPUT_LOCK, open(self.bodies_file, "ab") as bodies:
                bodies.write(body + b"\n")
        mode = self.mode()
        if mode and mode[0] == "unauthorized":
            return self.reply(401, {"error": "key revoked"})
        if mode and mode[0] == "unavailable":
            self.send_response(503)
            self.send_header("Retry-After", mode[1] if len(mode) > 1 else "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/v1/verdicts":
            return self.reply(404, {"error": "not found"})
        if self.headers.get("Authorization") != "Bearer " + os.environ["MOCK_API_KEY"]:
            return self.reply(401, {"error": "invalid API key"})
        if self.headers.get("Content-Type") != "application/json":
            return self.reply(400, {"error": "content type"})
        try:
            action = json.loads(body)
            assert action["schema_version"] == "1"
            kind = action["action"]["kind"]
            assert kind in ("connect", "egress_gap")
            assert action["action"]["metadata"]["source"] == "egress"
            assert action["verdict"]["decision"] in ("allow", "block")
            event_id = action["action"]["metadata"]["event_id"]
        except Exception as error:  # noqa: BLE001 - any shape problem is a 400
            return self.reply(400, {"error": f"bad action: {error!r}"})
        if len(mode) > 1 and mode[0] == "hang" and mode[1] == event_id:
            say(f"HUNG {event_id}")
            deadline = time.monotonic() + 60
            while self.mode()[:2] == ["hang", event_id] and time.monotonic() < deadline:
                time.sleep(0.05)
            self.close_connection = True
            return
        if mode and mode[0] == "slow":
            say(f"HOLDING {event_id}")
            if len(mode) > 1:
                time.sleep(float(mode[1]))
            else:
                deadline = time.monotonic() + 60
                while self.mode()[:1] == ["slow"] and time.monotonic() < deadline:
                    time.sleep(0.05)
            mode = self.mode()
        if len(mode) > 2 and mode[0] == "fail" and mode[2] == event_id:
            say(f"FAILED {mode[1]} {event_id}")
            return self.reply(int(mode[1]), {"error": "cannot take this one"})
        if len(mode) > 1 and mode[0] == "reject" and event_id in mode[1:]:
            say(f"REJECTED {event_id}")
            return self.reply(400, {"error": "this action is invalid"})
        if kind == "egress_gap":
            metadata = action["action"]["metadata"]
            say(f"GAP {event_id} {metadata['dropped_actions']} {metadata['oldest_started_at']} "
                  f"{metadata['newest_started_at']}")
        elif self.timestamps:
            say(f"{time.time():.6f} RECEIVED {self.client_address[1]} {event_id}")
        else:
            say(f"RECEIVED {self.client_address[1]} {event_id}")
        self.reply(200, {"status": "ok"})


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode-file")
    parser.add_argument("--policy-dir", help="serve DIR/AGENT.json at GET /v1/policy?agent=AGENT")
    parser.add_argument("--bodies", help="append every request body received to this file (leak checks)")
    parser.add_argument("--timestamps", action="store_true", help="prefix RECEIVED lines with the time (benchmarks)")
    args = parser.parse_args()
    Handler.mode_file = args.mode_file
    Handler.policy_dir = args.policy_dir
    Handler.bodies_file = args.bodies
    Handler.timestamps = args.timestamps
    Server.allow_reuse_address = True
    server = Server(("127.0.0.1", args.port), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    say(f"PORT {server.server_address[1]}")
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
