"""The request-smuggling corpus and its driver.

CASES holds over 160 ambiguous or malformed requests: Content-Length with Transfer-Encoding, Transfer-Encoding
spelled with spaces, tabs, commas and other cases, duplicate, signed and odd Content-Lengths, obs-fold, bare CR
and LF, NUL, chunk-size overflow, chunk extensions, invalid methods and versions, and pipelined requests to two
hosts. Each is sent through the proxy on its own origin port (plain HTTP in absolute form, or origin form inside
an inspected TLS connection with --mitm), the write side is closed, and the proxy's answers are read until it
closes. One JSON line per case: {"name", "port", "port2", "statuses"}.

usage: smuggling_client.py --proxy PORT --ports P1,P2,… [--mitm --ca CA.pem] | --count | --dump
"""
import argparse
import json
import re
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

CRLF = "\r\n"


def request(headers, body="", method="POST", version="HTTP/1.1", target="{TARGET}"):
    return f"{method} {target} {version}\r\nHost: {{HOST}}\r\n{headers}\r\n{body}"


def cases():
    out = []
    chunked_body = "4\r\nwxyz\r\n0\r\n\r\n"
    # Transfer-Encoding spellings, with and without a Content-Length beside them.
    te_values = [
        "chunked", " chunked", "chunked ", "\tchunked", "Chunked", "CHUNKED", "chunked, identity", "identity, chunked",
        "gzip, chunked", "chunked, gzip", "chunked,chunked", "x chunked", "chunked;q=1", '"chunked"', "chunk",
        "chunkedx", "identity", "", "chunked\x0b", "chunked\x00",
    ]
    for index, value in enumerate(te_values):
        out.append((f"te-{index}", request(f"Transfer-Encoding: {value}\r\n", chunked_body)))
        out.append((f"te-{index}+cl", request(f"Content-Length: 4\r\nTransfer-Encoding: {value}\r\n", chunked_body)))
        out.append((f"cl+te-{index}", request(f"Transfer-Encoding: {value}\r\nContent-Length: 30\r\n", chunked_body)))
    for index, name in enumerate(
        ["Transfer-Encoding ", "Transfer-Encoding\t", " Transfer-Encoding", "Transfer_Encoding", "transfer-encoding",
         "TRANSFER-ENCODING", "Transfer-Encodin", "X-Transfer-Encoding"]
    ):
        out.append((f"te-name-{index}", request(f"{name}: chunked\r\nContent-Length: 4\r\n", chunked_body)))
    out.append(("te-twice", request("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked_body)))
    out.append(("te-then-identity", request("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", chunked_body)))
    out.append(("te-http10", request("Transfer-Encoding: chunked\r\n", chunked_body, version="HTTP/1.0")))
    # Content-Length oddities.
    for index, value in enumerate(
        ["4, 4", "4,5", "+4", "-4", " 4", "4 ", "0x4", "04", "4.0", "", "99999999999999999999", "4\t", "4 4", "1e1",
         "\u0664"]
    ):
        out.append((f"cl-{index}", request(f"Content-Length: {value}\r\n", "wxyz")))
    out.append(("cl-dup-same", request("Content-Length: 4\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("cl-dup-diff", request("Content-Length: 4\r\nContent-Length: 5\r\n", "wxyzq")))
    out.append(("cl-space-before-colon", request("Content-Length : 4\r\n", "wxyz")))
    out.append(("cl-short-body", request("Content-Length: 10\r\n", "wxyz")))
    out.append(("cl-long-body", request("Content-Length: 2\r\n", "wxyzGET / HTTP/1.1\r\n\r\n")))
    # obs-fold, bare CR and LF, NUL, control characters.
    out.append(("fold", request("X-Foo: a\r\n b\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("fold-te", request("Transfer-Encoding: identity\r\n chunked\r\n", chunked_body)))
    out.append(("fold-cl", request("Content-Length: 4\r\n 4\r\n", "wxyz")))
    out.append(("bare-lf", "GET {TARGET} HTTP/1.1\nHost: {HOST}\n\n"))
    out.append(("bare-lf-header", request("X-A: 1\nContent-Length: 4\r\n", "wxyz")))
    out.append(("bare-cr-header", request("X-A: 1\rContent-Length: 4\r\n", "wxyz")))
    out.append(("bare-cr-line", "GET {TARGET} HTTP/1.1\rHost: {HOST}\r\n\r\n"))
    out.append(("nul-value", request("X-A: a\x00b\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("nul-name", request("X-\x00A: a\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("nul-target", "GET {TARGET}\x00x HTTP/1.1\r\nHost: {HOST}\r\n\r\n"))
    out.append(("ctl-value", request("X-A: a\x01b\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("del-value", request("X-A: a\x7fb\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("space-in-name", request("X A: b\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("empty-name", request(": b\r\nContent-Length: 4\r\n", "wxyz")))
    out.append(("no-colon", request("X-A b\r\nContent-Length: 4\r\n", "wxyz")))
    # Chunked framing.
    for index, body in enumerate([
        "ffffffffffffffffff\r\nwxyz\r\n0\r\n\r\n", "10000000000000000\r\nwxyz\r\n0\r\n\r\n", "-1\r\nwxyz\r\n0\r\n\r\n",
        "4;ext=1\r\nwxyz\r\n0\r\n\r\n", "4 ;ext\r\nwxyz\r\n0\r\n\r\n", '4;e="q;x"\r\nwxyz\r\n0\r\n\r\n',
        "4\nwxyz\n0\n\n", "4\r\nwxyz0\r\n\r\n", "4\r\nwxyzXX0\r\n\r\n", "0x4\r\nwxyz\r\n0\r\n\r\n", "4\r\nwxyz\r\n",
        " 4\r\nwxyz\r\n0\r\n\r\n", "4\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\n", "4\r\nwxyz\r\n0\r\nTransfer-Encoding: x\r\n\r\n",
        "4\r\nwxyz\r\n0;ext\r\n\r\n", "2\r\nwxyz\r\n0\r\n\r\n", "\r\n4\r\nwxyz\r\n0\r\n\r\n", "4\r\nwxyz\r\n00\r\n\r\n",
    ]):
        out.append((f"chunk-{index}", request("Transfer-Encoding: chunked\r\n", body)))
    # Methods, versions, request lines.
    for index, line in enumerate([
        "GE T {TARGET} HTTP/1.1", "G\x00ET {TARGET} HTTP/1.1", "GET\t{TARGET} HTTP/1.1", "get {TARGET} HTTP/1.1",
        "GET {TARGET} HTTP/1.1 ", "GET  {TARGET} HTTP/1.1", "GET {TARGET} HTTP/9.9", "GET {TARGET} HTTP/1.1x",
        "GET {TARGET}", "GET {TARGET} http/1.1", "PRI * HTTP/2.0", "X" * 300 + " {TARGET} HTTP/1.1",
        "GET {TARGET}#frag HTTP/1.1", "GET {TARGET} HTTP/1.0",
    ]):
        out.append((f"line-{index}", line + "\r\nHost: {HOST}\r\n\r\n"))
    out.append(("expect-continue", request("Expect: 100-continue\r\nContent-Length: 4\r\n", "wxyz")))
    # Pipelined requests, also to a second host.
    out.append(("pipeline-two-hosts", "GET {TARGET} HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n"))
    out.append(("pipeline-body-then-host2", request("Content-Length: 4\r\n", "wxyz")
                + "POST {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\nContent-Length: 3\r\n\r\nabc"))
    out.append(("pipeline-host-header-other", "GET {TARGET} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n"))
    out.append(("pipeline-te-smuggle", request("Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                                               "0\r\n\r\nGET {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n")))
    out.append(("pipeline-cl-smuggle", request("Content-Length: 0\r\nContent-Length: 44\r\n",
                                               "GET {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n")))
    out.append(("pipeline-three", ("GET {TARGET} HTTP/1.1\r\nHost: {HOST}\r\n\r\n" * 3)))
    # Bodies on methods that rarely or never have one: a re-encoder that frames by method (NIO's adds or drops
    # framing fields for POST or TRACE, and takes only a lowercase "chunked" for GET) would send the decoded body
    # unframed, and the origin would read a request hidden in it.
    hidden = "0\r\n\r\nGET {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n"
    hidden_chunked = "{CHUNK[" + hidden + "]CHUNK}"  # one chunk holding it, sized once the names are in
    for method in ("GET", "DELETE", "OPTIONS", "TRACE", "POST"):
        for value in ("chunked", "Chunked", "CHUNKED"):
            out.append((f"body-{method}-te-{value}", request(f"Transfer-Encoding: {value}\r\n", hidden_chunked, method=method)))
    for method in ("GET", "TRACE", "DELETE"):
        smuggled = "GET {TARGET2} HTTP/1.1\r\nHost: {HOST2}\r\n\r\n"
        out.append((f"body-{method}-cl", request("Content-Length: {LEN}\r\n", smuggled, method=method)))
    out.append(("body-POST-none", request("", "", method="POST")))
    # CONNECT has no content (RFC 9110 §9.3.6): llhttp reads none after it, whatever its head says.
    out.append(("connect-cl", request("Content-Length: 4\r\n", "wxyz", method="CONNECT")))
    out.append(("connect-te", request("Transfer-Encoding: chunked\r\n", "4\r\nwxyz\r\n0\r\n\r\n", method="CONNECT")))
    # A framing field named in Connection, which a proxy drops on the way (RFC 9110 §7.6.1): the body would follow
    # with no framing, and the origin would read the request hidden in it.
    for method in ("GET", "POST"):
        out.append((f"conn-cl-{method}", request("Connection: keep-alive, Content-Length\r\nContent-Length: {LEN}\r\n",
                                                 smuggled, method=method)))
        out.append((f"conn-te-{method}", request("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
                                                 hidden_chunked, method=method)))
        out.append((f"proxy-conn-cl-{method}", request("Proxy-Connection: content-length\r\nContent-Length: {LEN}\r\n",
                                                       smuggled, method=method)))
    return out


def read_all(recv, deadline_reads=200):
    data = b""
    for _ in range(deadline_reads):
        chunk = recv()
        if not chunk:
            break
        data += chunk
    return data


def statuses(data):
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.[01] (\d{3})", data)]


def run_plain(proxy, payload):
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=5)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_all(lambda: sock.recv(65536))
    except OSError:
        return b""
    finally:
        sock.close()


def run_mitm(proxy, payload, host, context):
    sock = socket.create_connection(("127.0.0.1", proxy), timeout=5)
    try:
        sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return b""
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            return head
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

        def pump():
            if outgoing.pending:
                sock.sendall(outgoing.read())

        for _ in range(100):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                chunk = sock.recv(65536)
                if not chunk:
                    return b""
                incoming.write(chunk)
        pump()
        tls.write(payload)
        pump()
        sock.shutdown(socket.SHUT_WR)  # no close_notify: the raw write side ends, reading goes on

        def recv():
            while True:
                try:
                    return tls.read(65536)
                except ssl.SSLWantReadError:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return b""
                    incoming.write(chunk)
                except ssl.SSLError:
                    return b""

        return read_all(recv)
    except OSError:
        return b""
    finally:
        sock.close()


def payload(template, port, port2, mitm):
    """A case's bytes as sent to the proxy: origin form inside inspection, absolute form in plain HTTP."""
    host_name = "localhost" if mitm else "127.0.0.1"
    replacements = {
        "{HOST}": f"{host_name}:{port}", "{HOST2}": f"{host_name}:{port2}",
        "{TARGET}": "/case" if mitm else f"http://127.0.0.1:{port}/case",
        "{TARGET2}": "/second" if mitm else f"http://127.0.0.1:{port2}/second",
    }
    text = template
    for key, value in replacements.items():
        text = text.replace(key, value)
    if "{CHUNK[" in text:  # {CHUNK[data]CHUNK}: data as one chunk, then the last chunk
        before, _, rest = text.partition("{CHUNK[")
        data, _, after = rest.partition("]CHUNK}")
        text = f"{before}{len(data.encode()):x}\r\n{data}\r\n0\r\n\r\n{after}"
    if "{LEN}" in text:  # the length of the body after the head
        text = text.replace("{LEN}", str(len(text.partition("\r\n\r\n")[2].encode())))
    return text.encode("latin-1") if all(ord(c) < 256 for c in text) else text.encode("utf-8")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", type=int)
    parser.add_argument("--ports")
    parser.add_argument("--mitm", action="store_true")
    parser.add_argument("--ca")
    parser.add_argument("--count", action="store_true", help="print how many cases there are")
    parser.add_argument("--dump", action="store_true",
                        help="print each case's bytes as sent inside inspection, one hex line per case")
    args = parser.parse_args()
    corpus = cases()
    if args.count:
        print(len(corpus))
        return
    if args.dump:
        for _, template in corpus:
            print(payload(template, 1001, 1002, True).hex())
        return
    if args.proxy is None or args.ports is None:
        parser.error("--proxy and --ports are required")
    ports = [int(p) for p in args.ports.split(",")]
    assert len(ports) >= len(corpus) + 1, "one origin port per case, and one more"
    context = ssl.create_default_context(cafile=args.ca) if args.mitm else None

    def one(index):
        name, template = corpus[index]
        port, port2 = ports[index], ports[-1]
        data = payload(template, port, port2, args.mitm)
        data = run_mitm(args.proxy, data, f"localhost:{port}", context) if args.mitm else run_plain(args.proxy, data)
        return {"name": name, "port": port, "port2": port2, "statuses": statuses(data)}

    with ThreadPoolExecutor(max_workers=16) as pool:
        for result in pool.map(one, range(len(corpus))):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
