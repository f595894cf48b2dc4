"""One client connection to the proxy, used before and after a reload: a plain-HTTP GET on it, then "READY", then
(on SIGUSR1, at most 20 s later) a CONNECT on the same connection and TLS trusting CAFILE only. Prints "PASSED THROUGH"
when the origin's own certificate came back, "INSPECTED" when a leaf the proxy minted did.

usage: connect_after_signal.py PROXY_PORT PLAIN_PORT ORIGIN_PORT CAFILE PROXY_AUTHORIZATION
"""
import signal
import socket
import ssl
import sys


def read_until(sock, marker, what):
    """Reads until `marker` has arrived; exits naming `what` if the proxy closes first."""
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit(f"closed before {what}: {data!r}")
        data += chunk
    return data


def main():
    proxy_port, plain_port, origin_port, cafile, authorization = sys.argv[1:6]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    auth = f"Proxy-Authorization: {authorization}\r\n"
    sock = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=10)
    sock.sendall(f"GET http://127.0.0.1:{plain_port}/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    read_until(sock, b"hello from origin", "the answer")
    print("READY", flush=True)
    if signal.sigtimedwait({signal.SIGUSR1}, 20) is None:
        sys.exit("no signal")
    target = f"localhost:{origin_port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    head = read_until(sock, b"\r\n\r\n", "the CONNECT answer")
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"CONNECT answered {head.splitlines()[0]!r}")
    context = ssl.create_default_context(cafile=cafile)
    try:
        context.wrap_socket(sock, server_hostname="localhost").close()
        print("PASSED THROUGH", flush=True)
    except ssl.SSLError as error:
        print(f"INSPECTED {error}", flush=True)


if __name__ == "__main__":
    main()
