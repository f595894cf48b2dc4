"""One request inside an inspected tunnel, sent as raw bytes: CONNECT to 127.0.0.1:PORT through the proxy, TLS
trusting the inspection CA (with SNI when given), then REQUEST (Python escapes such as \\r\\n decoded).
Prints the response's status line, or `CLOSED <reason>` when the proxy closed the connection instead.

usage: raw_mitm_request.py PROXY_PORT ORIGIN_PORT CA_FILE SNI|- REQUEST
"""
import socket
import ssl
import sys


def main():
    proxy_port, origin_port, ca_file, sni, request = sys.argv[1:6]
    sock = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            print("CLOSED before the CONNECT answer")
            return
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        print(answer.split(b"\r\n")[0].decode())
        return
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False  # the leaf names the SNI, or the address
    try:
        tls = context.wrap_socket(sock, server_hostname=None if sni == "-" else sni)
        tls.sendall(request.encode().decode("unicode_escape").encode("latin-1"))
        response = tls.recv(65536)
    except (ssl.SSLError, OSError) as error:
        print(f"CLOSED {type(error).__name__}")
        return
    print(response.split(b"\r\n")[0].decode() if response else "CLOSED eof")


if __name__ == "__main__":
    main()
