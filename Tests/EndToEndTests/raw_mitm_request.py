"""One request inside an inspected tunnel, sent as raw bytes: CONNECT to 127.0.0.1:PORT through the proxy, TLS
trusting the inspection CA (with SNI when given), then REQUEST (Python escapes such as \\r\\n decoded).
Prints the response's status line, or `CLOSED <reason>` when the proxy closed the connection instead.

usage: raw_mitm_request.py PROXY_PORT ORIGIN_PORT CA_FILE SNI|- REQUEST
"""
import ssl
import sys

from proxy_tunnel import open_tunnel


def main():
    proxy_port, origin_port, ca_file, sni, request = sys.argv[1:6]
    sock, status = open_tunnel(proxy_port, "127.0.0.1", origin_port)
    if sock is None or not status.startswith("HTTP/1.1 200"):
        print(status)
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
