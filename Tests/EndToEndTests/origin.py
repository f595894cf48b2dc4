"""Test peers for the end-to-end tests; every mode listens on a loopback address only.

Modes:
  https / http  an HTTP/1.1 origin (keep-alive) with:
                GET /hello          -> "hello from origin\n"
                GET /headers        -> the request head as received, one "name: value" per line
                POST|PUT /sha256    -> "<body length> <sha256 hex>\n" (Content-Length or chunked body)
                GET /ws (WebSocket) -> 101, then echoes each text frame back as "echo: <text>"
                GET /truncated      -> promises 100 bytes, sends 10, closes
                GET|HEAD /chunked   -> "hello chunked\n" in two chunks, then a trailer (HEAD: the head only)
                GET /gzipped        -> "hello gzip\n" gzip-coded, sent with Transfer-Encoding: gzip, chunked
                GET /unframed       -> "until close\n" with no length, ended by closing the connection
                                       (over TLS: no close_notify, as Python's server does; with
                                       ?notify=1 after a close_notify exchange; ?reset=1 by a TCP
                                       reset; ?garbage=1 after a TLS record that fails to decrypt);
                                       ?size=N: N bytes of x; ?stall=1: no end until the peer closes
                GET /sized?size=N   -> N bytes of x with a Content-Length
                GET /two-lengths    -> a 200 with two different Content-Length fields, and the connection
                                       kept open (until the peer closes, at most 10 s)
                GET /hangup         -> no response: the connection closes (over TLS: no close_notify;
                                       ?reset=1 by a TCP reset; ?wait=1 prints "GOT /hangup?wait=1" and
                                       closes only once the peer has)
                GET /tls-session    -> "resumed\n" when this connection's TLS session was resumed, else
                                       "full handshake\n"
                GET /connection     -> "connection <n> request <m>\n": which of the server's connections (counted
                                       from 1) and which request on it this is; ?close=1: with
                                       "Connection: close", then the connection closes; ?linger=1 on a
                                       request that ends the connection (HTTP/1.0): the close waits (at
                                       most 2 s) until the peer has closed; ?hold=1: the connection then
                                       idles, reading nothing, until GET /release-held, and closes (over TLS
                                       without close_notify), printing "HELD closed"
                GET /release-held   -> ends the connection /connection?hold=1 holds, then "released\n"
                GET /stop-listening -> "stopped\n", then the server accepts no more connections (its open
                                       ones go on)
                GET /swap-cert      -> "swapped\n"; new connections get --swap-cert/--swap-key from then on
                GET /prefer-h2      -> "preferring h2\n"; new connections choose h2 by ALPN when offered (this
                                       origin still speaks HTTP/1.1 on them)
                GET /ntlm           -> 401 with "WWW-Authenticate: NTLM" (a connection-bound scheme) and
                                       the /connection body
                GET|POST /flaky     -> on a connection's first request "fresh connection\n"; on a later one
                                       no response: the connection closes (as an origin closing an idle
                                       keep-alive connection as a request arrives), and "FLAKY hang-up" is
                                       printed; any path with flaky=1 in its query: the same on a later
                                       request, the path's own answer on the first
                POST /early?read=N  -> reads N body bytes, then answers 413 with no length before the rest
                                       and closes (over TLS: no close_notify); to Expect: 100-continue it
                                       sends no 100, only the 413
  banner        writes "SSH-2.0-kaizen-test\r\n" at once, then echoes
  echo          echoes every byte back
  halfclose     reads until EOF, then answers "got <n> bytes\n" and closes
  count         reads until EOF or reset, answering nothing, then prints "RECEIVED <n>" (the bytes that arrived)
Prints "PORT <n>" on stdout once it listens.
"""
import argparse
import base64
import gzip
import hashlib
import http.server
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse


CONNECTIONS = [0]
CONNECTIONS_LOCK = threading.Lock()
HELD = threading.Event()
HELD_CLOSED = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with CONNECTIONS_LOCK:
            CONNECTIONS[0] += 1
            self.connection_number = CONNECTIONS[0]

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length)

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1(
            (self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            header = self.rfile.read(2)
            if len(header) < 2:
                return
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if header[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close: answer and stop
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            reply = b"echo: " + payload
            self.wfile.write(bytes([0x81, len(reply)]) + reply if len(reply) < 126
                             else bytes([0x81, 126]) + len(reply).to_bytes(2, "big") + reply)
            self.wfile.flush()

    def wait_for_peer_close(self, seconds):
        self.connection.settimeout(seconds)
        try:
            self.rfile.read()
        except OSError:
            pass

    def hang_up(self, reset):
        """Ends the connection now: over TLS without close_notify; with `reset`, by a TCP reset and no FIN."""
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.close()
        else:
            # close() alone waits for rfile/wfile, and the server's shutdown(SHUT_WR) would send a FIN first;
            # closing the descriptor now sends only what SO_LINGER says.
            os.close(self.connection.detach())

    def flaky(self):
        """/flaky: answers on the connection's first request, hangs up on any later one. True when it handled it."""
        self.served = getattr(self, "served", 0) + 1
        flaky_path = self.path.startswith("/flaky")
        if not flaky_path and not (self.served > 1 and "flaky=1" in self.path):
            return False
        if self.served > 1:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            print("FLAKY hang-up", flush=True)
            self.hang_up(reset=False)
            self.close_connection = True
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(200, "fresh connection\n")
        return True

    def do_GET(self):
        if self.flaky():
            return
        if self.path.startswith("/connection"):
            body = f"connection {self.connection_number} request {self.served}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if "close=1" in self.path:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            if "leftover=1" in self.path:
                # Past the end the framing gives: the start of a response head nobody asked for.
                self.wfile.write(b"HTTP/1.1 302 Found\r\nSet-Cookie: stale=1\r\nX-Junk: ")
            if "linger=1" in self.path and self.close_connection:
                self.wfile.flush()
                self.wait_for_peer_close(2)
            if "hold=1" in self.path:
                self.wfile.flush()
                HELD.wait(10)
                self.hang_up(reset=False)
                self.close_connection = True
                print("HELD closed", flush=True)
                HELD_CLOSED.set()
            return
        if self.path.startswith("/stop-listening"):
            # Shut down before the answer: whoever has it knows no connection is accepted any more. Its descriptor
            # then names a pipe that never becomes readable, so the accept loop waits (a closed one it would poll
            # without end).
            self.server.socket.shutdown(socket.SHUT_RDWR)
            readable, self.server.idle_pipe = os.pipe()
            os.dup2(readable, self.server.socket.fileno())
            os.close(readable)
            self.reply(200, "stopped\n")
            return
        if self.path.startswith("/prefer-h2"):
            # New TLS connections choose h2 when the client offers it (this origin still speaks HTTP/1.1 on them).
            self.server.socket.context.set_alpn_protocols(["h2", "http/1.1"])
            self.reply(200, "preferring h2\n")
            return
        if self.path.startswith("/swap-cert"):
            self.server.socket.context.load_cert_chain(self.server.swap[0], self.server.swap[1])
            self.reply(200, "swapped\n")
            return
        if self.path.startswith("/release-held"):
            HELD.set()
            HELD_CLOSED.wait(10)
            self.reply(200, "released\n")
            return
        if self.path.startswith("/ntlm"):
            body = f"connection {self.connection_number} request {self.served}\n".encode()
            self.send_response(401)
            self.send_header("WWW-Authenticate", "NTLM")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/tls-session"):
            resumed = isinstance(self.connection, ssl.SSLSocket) and self.connection.session_reused
            self.reply(200, "resumed\n" if resumed else "full handshake\n")
            return
        if self.path.startswith("/ws") and self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
            self.close_connection = True
        elif self.path.startswith("/truncated"):
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"6\r\nhello \r\n8\r\nchunked\n\r\n0\r\nX-Checksum: 42\r\n\r\n")
            self.wfile.flush()
        elif self.path.startswith("/gzipped"):
            data = gzip.compress(b"hello gzip\n")
            self.send_response(200)
            self.send_header("Transfer-Encoding", "gzip, chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            self.wfile.flush()
        elif self.path.startswith("/unframed"):
            self.send_response(200)
            self.end_headers()
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            size = int(query.get("size", ["0"])[0])
            self.wfile.write(b"x" * size if size else b"until close\n")
            self.wfile.flush()
            if "notify=1" in self.path and isinstance(self.connection, ssl.SSLSocket):
                self.connection.settimeout(10)
                self.connection.unwrap()  # close_notify, and the peer's back
            if "garbage=1" in self.path:  # a record that fails to decrypt, then the close
                raw = socket.socket(fileno=os.dup(self.connection.fileno()))
                raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
                raw.close()
            if "stall=1" in self.path:  # neither more nor an end: wait (bounded) until the peer closes
                self.wait_for_peer_close(30)
            if "reset=1" in self.path:  # no close_notify and no FIN: a TCP reset
                self.hang_up(reset=True)
            self.close_connection = True
        elif self.path.startswith("/hangup"):
            if "wait=1" in self.path:  # the request is here: say so, then wait (bounded) for the peer to go
                print(f"GOT {self.path}", flush=True)
                self.wait_for_peer_close(20)
            self.hang_up(reset="reset=1" in self.path)
            self.close_connection = True
        elif self.path.startswith("/sized"):
            size = int(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b"x" * size)
        elif self.path.startswith("/two-lengths"):  # a response no strict parser takes; the connection stays open
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
            self.wfile.flush()
            self.wait_for_peer_close(10)
            self.close_connection = True
        elif self.path.startswith("/status99"):  # a status below 100, with a body llhttp reads and a client would not
            self.wfile.write(b"HTTP/1.1 099 Odd\r\nContent-Length: 5\r\n\r\nhello")
        elif self.path.startswith("/interim"):  # /interim?count=N: N 103 Early Hints, then a 200
            count = int(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("count", ["0"])[0])
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" * count)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        elif self.path.startswith("/unasked-101"):  # switching protocols though the request did not ask
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            self.close_connection = True
        elif self.path.startswith("/hello"):
            self.reply(200, "hello from origin\n")
        elif self.path.startswith("/headers"):
            lines = [f"{self.command} {self.path} {self.request_version}"]
            lines += [f"{k}: {v}" for k, v in self.headers.items()]
            self.reply(200, "\n".join(lines) + "\n")
        else:
            self.reply(404, "not found\n")

    do_HEAD = do_GET

    def handle_expect_100(self):
        # /early answers its final status at once, as nginx does for a body it will not take: no 100 Continue.
        return True if self.path.startswith("/early") else super().handle_expect_100()

    def do_POST(self):
        if self.flaky():
            return
        if self.path.startswith("/early"):
            # /early?read=N[&length=1][&linger=S]: read N bytes of the body, answer 413 (with a Content-Length when
            # asked), then keep the connection S seconds without reading more before closing it.
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            self.rfile.read(int(query.get("read", ["0"])[0]))
            self.send_response(413)
            if "length" in query:
                self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"too large\n")
            self.wfile.flush()
            time.sleep(float(query.get("linger", ["0"])[0]))
            self.close_connection = True
            return
        body = self.read_body()
        self.reply(200, f"{len(body)} {hashlib.sha256(body).hexdigest()}\n")

    do_PUT = do_POST


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_stream(sock, mode):
    def handle(conn):
        with conn:
            if mode == "banner":
                conn.sendall(b"SSH-2.0-kaizen-test\r\n")
            if mode in ("banner", "echo"):
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            if mode == "count":
                total = 0
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        total += len(data)
                except OSError:
                    pass
                print(f"RECEIVED {total}", flush=True)
                return
            if mode == "halfclose":
                total = 0
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    total += len(data)
                conn.sendall(f"got {total} bytes\n".encode())

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve_slow_mutual_tls(sock, args):
    """TLS 1.3 requiring a client certificate, and slow to read the client's second flight: it sends its own flight at
    once, then waits `--slow-finish` seconds before it reads the client's Certificate and Finished (and refuses a
    missing certificate with certificate_required). A client (the proxy) that finishes its handshake on sending its
    Finished has sent a request by then."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(args.client_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_3

    def handle(conn):
        with conn:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_side=True)
            flights = 0
            while True:
                try:
                    tls.do_handshake()
                    return  # a client with a certificate: not what this origin is for
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    conn.sendall(outgoing.read())  # the alert
                    return
                pending = outgoing.read()
                if pending:
                    conn.sendall(pending)
                    flights += 1
                    if flights == 1:
                        time.sleep(args.slow_finish)
                data = conn.recv(65536)
                if not data:
                    return
                incoming.write(data)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--swap-cert")
    parser.add_argument("--swap-key")
    parser.add_argument("--no-tickets", action="store_true", help="no TLS 1.3 session tickets (no resumption)")
    parser.add_argument("--only-name", help="refuse every other SNI with a fatal unrecognized_name alert")
    parser.add_argument("--print-sni", action="store_true", help='print "SNI <name>" as each ClientHello arrives')
    parser.add_argument("--client-ca", help="require a client certificate issued by this CA (mutual TLS)")
    parser.add_argument("--client-cert-optional", action="store_true", help="with --client-ca: ask, not require")
    parser.add_argument("--tls12", action="store_true", help="TLS 1.2 at most")
    parser.add_argument("--slow-finish", type=float, help="mode mutual-tls-slow: seconds before the client's Finished is read")
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET

    if args.mode in ("https", "http"):
        Server.address_family = family
        server = Server((args.host, 0), Handler)
        if args.mode == "https":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.cert, args.key)
            if args.no_tickets:
                context.num_tickets = 0
            if args.client_ca:
                context.verify_mode = ssl.CERT_OPTIONAL if args.client_cert_optional else ssl.CERT_REQUIRED
                context.load_verify_locations(args.client_ca)
            if args.tls12:
                context.maximum_version = ssl.TLSVersion.TLSv1_2
            if args.only_name:
                only = args.only_name
                context.sni_callback = lambda _sock, name, _ctx: None if name == only else ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            elif args.print_sni:
                context.sni_callback = lambda _sock, name, _ctx: print(f"SNI {name}", flush=True)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            server.swap = (args.swap_cert, args.swap_key)
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, 0))
        sock.listen(64)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        if args.mode == "mutual-tls-slow":
            serve_slow_mutual_tls(sock, args)
        else:
            serve_stream(sock, args.mode)


if __name__ == "__main__":
    sys.exit(main())
