"""The CONNECT the end-to-end Python clients start with, shared by them."""
import socket


def open_tunnel(proxy_port, host, port):
    """CONNECT host:port through the proxy on 127.0.0.1:PROXY_PORT. Returns (socket, the answer's status line), or
    (None, "CLOSED before the CONNECT answer") when the proxy closed first; the socket has a 10 s timeout."""
    sock = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            return None, "CLOSED before the CONNECT answer"
        answer += chunk
    return sock, answer.split(b"\r\n")[0].decode()
