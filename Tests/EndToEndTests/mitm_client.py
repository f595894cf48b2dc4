"""A TLS client for the inspection tests: CONNECT through the proxy, then TLS (verifying against CAFILE).

  mitm_client.py strict PROXY_PORT ORIGIN_PORT CAFILE     GET /hello with VERIFY_X509_STRICT; prints
                                                         "<TLS version> <status line> <body ok>"
  mitm_client.py raw PROXY_PORT ORIGIN_PORT CAFILE HEX    sends the bytes HEX as they are; prints
                                                         "<status line>|<closed by the proxy>"
  mitm_client.py ws PROXY_PORT ORIGIN_PORT CAFILE         a WebSocket exchange with /ws; prints the status
  mitm_client.py ws-early …                                the same, the first frame sent with the upgrade request
                                                         line, each echo, and whether the close was answered
  mitm_client.py reset-handshake PROXY_PORT …             the handshake begun, the proxy's flight received, then a
                                                         TCP reset; prints "RESET"
  mitm_client.py idle PROXY_PORT ORIGIN_PORT CAFILE       one keep-alive GET /hello, prints "READY", then waits
                                                         (at most 20 s) for the proxy to close; prints "CLOSED"
  mitm_client.py framing PROXY_PORT ORIGIN_PORT CAFILE    HEAD /chunked, GET /chunked, GET /hello, GET /unframed
                                                         on one connection (Python's http.client reading
                                                         strictly); prints one line per response
  mitm_client.py pipelined PROXY_PORT ORIGIN_PORT CAFILE  GET, POST (5 bytes), GET sent in one write, the last
                                                         with Connection: close; prints each status line and body
  mitm_client.py pipelined-malformed PROXY_PORT …         GET, then a request llhttp refuses, in one write; the same
  mitm_client.py pipelined-malformed-unframed PROXY_PORT … GET /unframed?notify=1, then a request llhttp refuses, in
                                                         one write; prints the bytes after the first head and
                                                         whether the proxy closed
  mitm_client.py close-notify PROXY_PORT ORIGIN_PORT CAFILE  GET /unframed (the origin closes without close_notify),
                                                         GET /unframed?notify=1 (with it), GET /truncated (10 of
                                                         100 bytes, then a close), a body cut by a TCP reset or by
                                                         a TLS record that fails to decrypt, and
                                                         a POST answered before its body was all sent, each on
                                                         its own connection; prints the status line, the body and
                                                         whether the proxy's close came with close_notify
                                                         ("clean") or not ("unclean"); then GET /hangup and
                                                         GET /hangup?reset=1 (no answer: a close, a reset)
  mitm_client.py early-answer PROXY_PORT ORIGIN_PORT CAFILE  POST /early with 10 of its 100000 bytes; reads the
                                                         origin's 413 (it has a length, and the origin keeps the
                                                         connection 3 s), prints its status line and body, and
                                                         closes without sending the rest
  mitm_client.py early-answer-expect PROXY_PORT …         the same with Expect: 100-continue and none of the body
  mitm_client.py reused-hangup PROXY_PORT …               GET /hello, then GET /hangup on the same connection;
                                                         prints the first status line, then the second's bytes
                                                         and whether the end was clean
  mitm_client.py abandon PROXY_PORT …                     sends GET /hangup?wait=1, prints "SENT", closes its
                                                         connection on SIGUSR1 and prints "CLOSED"
  mitm_client.py wait-then-get PROXY_PORT …               completes the TLS handshake, prints "READY", and on
                                                         SIGUSR1 sends GET /connection; prints the status line and
                                                         the body
  mitm_client.py hello-when-told PROXY_PORT ORIGIN_PORT CAFILE ALPN
                                                         the CONNECT answered, prints "CONNECTED" and sends its
                                                         ClientHello only when told (SIGUSR1), offering ALPN (a
                                                         comma-separated list, or "-" for none); then GET /hello;
                                                         prints the status line, the body and the protocol chosen
  mitm_client.py many PROXY_PORT ORIGIN_PORT CAFILE N     N connections open at once, each with one GET /hello
                                                         answered; prints "OPEN N", closes them all on SIGUSR1
                                                         and prints "CLOSED"
  mitm_client.py stall-and-leave PROXY_PORT …             GET /sized?size=64 MiB, reads 100000 bytes of its body,
                                                         stops reading; once the queues between it and the proxy
                                                         stop moving, leaves with a TCP reset; prints "<body bytes
                                                         read> <decrypted, not read> <kernel queues>", the queues
                                                         being its unread bytes and the proxy socket's unsent or
                                                         unacknowledged ones (/proc/net/tcp)
"""
import base64
import os
import select
import signal
import socket
import ssl
import struct
import sys

from proxy_tunnel import open_tunnel


def tunnel(proxy_port, origin_port):
    """A CONNECT to localhost:ORIGIN_PORT through the proxy, answered 200: the plain socket."""
    sock, status = open_tunnel(proxy_port, "localhost", origin_port)
    if sock is None:
        raise SystemExit("proxy closed before answering CONNECT")
    assert status.startswith("HTTP/1.1 200"), status
    return sock


def connect(proxy_port, origin_port, cafile, strict=False, ragged_eof_is_eof=True):
    sock = tunnel(proxy_port, origin_port)
    context = ssl.create_default_context(cafile=cafile)
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=ragged_eof_is_eof)


def read_all(tls):
    data, closed = b"", False
    try:
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                closed = True
                break
            data += chunk
    except (ssl.SSLError, ConnectionResetError):
        closed = True
    except socket.timeout:
        pass
    return data, closed


def strict(tls):
    tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, _ = read_all(tls)
    print(tls.version(), data.split(b"\r\n")[0].decode(), data.endswith(b"hello from origin\n"))


def raw(tls, hex_request):
    tls.sendall(bytes.fromhex(hex_request))
    data, closed = read_all(tls)
    print(data.split(b"\r\n")[0].decode() + "|" + str(closed))


def websocket(tls, early=False):
    """With `early`, the first frame goes in the same write as the upgrade request, before the 101."""
    key = base64.b64encode(os.urandom(16)).decode()

    def frame(text, mask=None):
        mask = mask or os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text.encode()))
        return bytes([0x81, 0x80 | len(payload)]) + mask + payload

    def receive():
        header = tls.recv(2)
        data = b""
        while len(data) < header[1]:
            data += tls.recv(header[1] - len(data))
        return data.decode()

    texts = ["hello ws", "second frame"]
    tls.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
                # A mask of two LFs: read as HTTP, these bytes would be a line and a bare-LF empty line.
                + (frame(texts[0], mask=b"\n\n\x01\x02") if early else b""))
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    print(head.split(b"\r\n")[0].decode())
    if early:
        print(receive())
        texts = texts[1:]
    for text in texts:
        tls.sendall(frame(text))
        print(receive())
    tls.sendall(bytes([0x88, 0x80]) + os.urandom(4))
    print(tls.recv(2) == b"\x88\x00")


def idle(tls):
    tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while not data.endswith(b"hello from origin\n"):
        data += tls.recv(4096)
    print("READY", flush=True)
    tls.settimeout(20)
    data, closed = read_all(tls)
    print("CLOSED" if closed else "STILL OPEN", flush=True)


def pipelined(tls, malformed=False):
    if malformed:  # a good request, then one llhttp refuses (a field line without a colon), in one write
        tls.sendall(b"GET /hello?n=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    b"GET /hello?n=2 HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\n\r\n")
    else:
        tls.sendall(b"GET /hello?n=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
                    b"GET /hello?n=3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_all(tls)
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        print(head.split(b"\r\n")[0].decode(), rest[:length].decode().strip())
        data = rest[length:]
    print("closed" if closed else "open")


def pipelined_malformed_unframed(tls):
    tls.sendall(b"GET /unframed?notify=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                b"GET /hello?n=2 HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\n\r\n")
    data, closed = read_all(tls)
    print(repr(data.partition(b"\r\n\r\n")[2]), "closed" if closed else "open")


def framing(tls):
    import http.client
    conn = http.client.HTTPConnection("localhost")
    conn.sock = tls
    for method, path in (("HEAD", "/chunked"), ("GET", "/chunked"), ("GET", "/hello"), ("GET", "/unframed")):
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        framing = response.getheader("Transfer-Encoding") or response.getheader("Content-Length") or "-"
        # A close-delimited body ends only when the proxy closes: a proxy that kept it open times this out.
        print(method, path, response.status, framing, repr(body))


def read_to_end(tls):
    """Everything until the connection ends, and how it ended: "clean" (with close_notify), "unclean" (without,
    on a socket wrapped with ragged_eof_is_eof=False) or "reset"."""
    data, end = b"", "clean"
    try:
        while chunk := tls.recv(4096):
            data += chunk
    except ssl.SSLEOFError:
        end = "unclean"
    except ConnectionResetError:
        end = "reset"
    return data, end


def close_notify(proxy_port, origin_port, cafile):
    requests = [
        "GET /unframed HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /unframed?notify=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /truncated HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /unframed?size=1000&reset=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /unframed?garbage=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        # The origin answers before the body is all there (10 of 100000 bytes sent).
        "POST /early?read=10 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789",
        # The origin ends its connection without answering: by a close, by a reset.
        "GET /hangup HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /hangup?reset=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    for request in requests:
        tls = connect(proxy_port, origin_port, cafile, ragged_eof_is_eof=False)
        tls.settimeout(10)
        tls.sendall(request.encode())
        data, end = read_to_end(tls)
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        # How much of a body cut by a reset arrives is up to the kernels (a reset may discard what is unread).
        shown = "-" if "reset=1" in request else repr(body)
        print(request.split(" HTTP/")[0], status, shown, end)
        tls.close()


def early_answer(proxy_port, origin_port, cafile, expect=False):
    tls = connect(proxy_port, origin_port, cafile)
    tls.settimeout(10)
    if expect:  # the body waits for a 100 Continue that never comes: the 413 comes instead
        tls.sendall(b"POST /early?read=0&length=1&linger=3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
                    b"Expect: 100-continue\r\n\r\n")
    else:
        tls.sendall(b"POST /early?read=10&length=1&linger=3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789")
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 10:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    print(head.split(b"\r\n")[0].decode(), repr(body))
    tls.close()


def reused_hangup(proxy_port, origin_port, cafile):
    """A request answered, then one the origin hangs up on, on the same connection."""
    tls = connect(proxy_port, origin_port, cafile, ragged_eof_is_eof=False)
    tls.settimeout(10)
    tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < len(b"hello from origin\n"):
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    print(data.split(b"\r\n")[0].decode())
    tls.sendall(b"GET /hangup HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data, end = read_to_end(tls)
    print(repr(data), end)


def reset_handshake(proxy_port, origin_port, cafile):
    """Starts the TLS handshake, waits for the proxy's flight (its leaf), then resets the TCP connection (SO_LINGER
    0): neither an alert nor an end of stream. Prints RESET."""
    sock = tunnel(proxy_port, origin_port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls = ssl.create_default_context(cafile=cafile).wrap_socket(
        sock, server_hostname="localhost", do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    readable, _, _ = select.select([tls], [], [], 10)
    if not readable:
        raise SystemExit("no server flight")
    tls.close()
    print("RESET", flush=True)


def abandon(proxy_port, origin_port, cafile):
    """Sends a request the origin holds unanswered, and leaves when told to (SIGUSR1): the client goes first."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    tls = connect(proxy_port, origin_port, cafile)
    tls.sendall(b"GET /hangup?wait=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    print("SENT", flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, 20) is None:
        raise SystemExit("not told to leave")
    tls.close()
    print("CLOSED", flush=True)


def wait_then_get(proxy_port, origin_port, cafile):
    """A connection that is set up, then idle until told (SIGUSR1) to send its request."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    tls = connect(proxy_port, origin_port, cafile)
    print("READY", flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, 20) is None:
        raise SystemExit("not told to go on")
    tls.settimeout(10)
    tls.sendall(b"GET /connection HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, _ = read_to_end(tls)
    head, _, body = data.partition(b"\r\n\r\n")
    print(head.split(b"\r\n")[0].decode(), body.decode().strip())


def hello_when_told(proxy_port, origin_port, cafile, alpn):
    """A CONNECT whose ClientHello waits until the test says (SIGUSR1): what the proxy does before it is in shows."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    sock = tunnel(proxy_port, origin_port)
    print("CONNECTED", flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, 20) is None:
        raise SystemExit("not told to go on")
    context = ssl.create_default_context(cafile=cafile)
    if alpn != "-":
        context.set_alpn_protocols(alpn.split(","))
    tls = context.wrap_socket(sock, server_hostname="localhost")
    tls.settimeout(10)
    tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, _ = read_to_end(tls)
    head, _, body = data.partition(b"\r\n\r\n")
    print(head.split(b"\r\n")[0].decode(), body.decode().strip(), tls.selected_alpn_protocol() or "none")


def many(proxy_port, origin_port, cafile, count):
    """COUNT inspected connections held open together (a load's memory in the proxy), closed when told to."""
    import concurrent.futures
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # before the threads start: they inherit it

    def one(_):
        tls = connect(proxy_port, origin_port, cafile)
        tls.settimeout(20)
        tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while not data.endswith(b"hello from origin\n"):
            chunk = tls.recv(4096)
            if not chunk:
                raise SystemExit("the connection closed before its answer")
            data += chunk
        return tls

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        connections = list(pool.map(one, range(count)))
    print("OPEN", len(connections), flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, 30) is None:
        raise SystemExit("not told to close")
    for tls in connections:
        tls.close()
    print("CLOSED", flush=True)


def tcp_queue(local_port, remote_port, which):
    """From /proc/net/tcp: the send (tx) or receive (rx) queue of the loopback socket local_port -> remote_port."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                tx, rx = queues.split(":")
                return int(tx if which == "tx" else rx, 16)
    return None


def stall_and_leave(proxy_port, origin_port, cafile):
    tls = connect(proxy_port, origin_port, cafile)
    tls.sendall(b"GET /sized?size=67108864 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    got = len(data.partition(b"\r\n\r\n")[2])
    while got < 100000:
        got += len(tls.recv(100000 - got))
    own, peer = tls.getsockname()[1], tls.getpeername()[1]
    # Bounded: at most 1000 looks, 20 s; the queues stand still once the proxy cannot write more (75 unchanged looks,
    # 1.5 s: longer than a loaded machine keeps the proxy from running).
    last, unchanged = None, 0
    for _ in range(1000):
        queues = (tcp_queue(own, peer, "rx"), tcp_queue(peer, own, "tx"))
        unchanged = unchanged + 1 if queues == last and queues[0] else 0
        last = queues
        if unchanged >= 75:
            break
        select.select([], [], [], 0.02)
    else:
        raise SystemExit(f"the queues never stood still: {last}")
    print(got, tls.pending(), last[0] + last[1], flush=True)
    raw = socket.socket(fileno=tls.detach())
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def main():
    mode, proxy_port, origin_port, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode == "close-notify":
        return close_notify(proxy_port, origin_port, cafile)
    if mode == "early-answer":
        return early_answer(proxy_port, origin_port, cafile)
    if mode == "early-answer-expect":
        return early_answer(proxy_port, origin_port, cafile, expect=True)
    if mode == "reused-hangup":
        return reused_hangup(proxy_port, origin_port, cafile)
    if mode == "abandon":
        return abandon(proxy_port, origin_port, cafile)
    if mode == "reset-handshake":
        return reset_handshake(proxy_port, origin_port, cafile)
    if mode == "wait-then-get":
        return wait_then_get(proxy_port, origin_port, cafile)
    if mode == "hello-when-told":
        return hello_when_told(proxy_port, origin_port, cafile, sys.argv[5])
    if mode == "many":
        return many(proxy_port, origin_port, cafile, int(sys.argv[5]))
    if mode == "stall-and-leave":
        return stall_and_leave(proxy_port, origin_port, cafile)
    tls = connect(proxy_port, origin_port, cafile, strict=(mode == "strict"))
    if mode == "strict":
        strict(tls)
    elif mode == "raw":
        raw(tls, sys.argv[5])
    elif mode == "ws":
        websocket(tls)
    elif mode == "ws-early":
        websocket(tls, early=True)
    elif mode == "idle":
        idle(tls)
    elif mode == "pipelined":
        pipelined(tls)
    elif mode == "pipelined-malformed":
        pipelined(tls, malformed=True)
    elif mode == "pipelined-malformed-unframed":
        pipelined_malformed_unframed(tls)
    elif mode == "framing":
        framing(tls)


if __name__ == "__main__":
    main()
