"""A strict HTTP/1.1 origin for the request-smuggling tests: it records the raw bytes it receives and parses them
itself, strictly, so the test sees exactly which requests reached it.

Listens on --ports loopback ports (TLS with --cert/--key), prints "PORTS p1 p2 …" once. For every request it
parses it prints one JSON line {"port", "method", "target", "body"} (body = its length in bytes) and answers
200 "ok" on the same connection. Anything a strict parser refuses (a bare CR or LF, obs-fold, NUL, a duplicate
or invalid Content-Length, Content-Length with Transfer-Encoding, a transfer coding other than chunked, a bad
chunk size) prints {"port", "error", "raw"} and closes: the proxy must never forward such bytes.
"""
import argparse
import base64
import json
import re
import selectors
import socket
import ssl
import sys
import threading

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
LOCK = threading.Lock()


def say(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Refused(Exception):
    pass


class Connection:
    def __init__(self, sock, port):
        self.sock, self.port, self.buffer, self.raw = sock, port, b"", b""

    def more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data
        self.raw += data

    def line(self):
        while b"\n" not in self.buffer:
            if len(self.buffer) > 1 << 20:
                raise Refused("line too long")
            self.more()
        line, self.buffer = self.buffer.split(b"\n", 1)
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            raise Refused("bare LF or CR")
        line = line[:-1]
        if b"\x00" in line:
            raise Refused("NUL")
        return line

    def exactly(self, count):
        while len(self.buffer) < count:
            self.more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def request(self):
        line = self.line()
        parts = line.split(b" ")
        if len(parts) != 3 or not TOKEN.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1]:
            raise Refused("request line %r" % line[:80])
        method, target = parts[0].decode(), parts[1].decode("latin-1")
        headers = []
        while True:
            line = self.line()
            if not line:
                break
            if line[:1] in (b" ", b"\t"):
                raise Refused("obs-fold")
            name, sep, value = line.partition(b":")
            if not sep or not TOKEN.match(name):
                raise Refused("header line %r" % line[:80])
            headers.append((name.lower(), value.strip(b" \t")))
        lengths = [v for n, v in headers if n == b"content-length"]
        codings = [v for n, v in headers if n == b"transfer-encoding"]
        if len(lengths) > 1:
            raise Refused("duplicate Content-Length")
        if lengths and codings:
            raise Refused("Content-Length with Transfer-Encoding")
        if codings and parts[2] == b"HTTP/1.0":
            raise Refused("Transfer-Encoding in HTTP/1.0")
        if codings:
            if codings != [b"chunked"]:
                raise Refused("transfer coding %r" % codings)
            body = 0
            while True:
                size_line = self.line()
                size = size_line.split(b";", 1)[0]
                if not re.match(rb"^[0-9A-Fa-f]{1,15}$", size):
                    raise Refused("chunk size %r" % size_line[:40])
                size = int(size, 16)
                if size == 0:
                    while self.line():  # trailers
                        pass
                    break
                body += len(self.exactly(size))
                if self.exactly(2) != b"\r\n":
                    raise Refused("chunk not followed by CRLF")
        elif lengths:
            if not re.match(rb"^[0-9]{1,15}$", lengths[0]):
                raise Refused("Content-Length %r" % lengths[0])
            body = len(self.exactly(int(lengths[0])))
        else:
            body = 0
        return method, target, body

    def serve(self):
        try:
            while True:
                method, target, body = self.request()
                say({"port": self.port, "method": method, "target": target, "body": body})
                self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except EOFError:
            pass
        except Refused as refused:
            say({"port": self.port, "error": str(refused), "raw": base64.b64encode(self.raw).decode()})
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    selector = selectors.DefaultSelector()
    ports = []
    for _ in range(args.ports):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        ports.append(listener.getsockname()[1])
        selector.register(listener, selectors.EVENT_READ)
    print("PORTS " + " ".join(map(str, ports)), flush=True)
    while True:
        for key, _ in selector.select():
            sock, _ = key.fileobj.accept()
            port = key.fileobj.getsockname()[1]

            def run(sock=sock, port=port):
                try:
                    if context:
                        sock = context.wrap_socket(sock, server_side=True)
                    sock.settimeout(10)
                    Connection(sock, port).serve()
                except (OSError, ssl.SSLError):
                    sock.close()

            threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
