"""An HTTP/2 origin over TLS for the end-to-end tests (Python `h2`), on a loopback address only.

Paths:
  GET  /size/<n>    -> 200, <n> bytes ("0123456789" repeated), sent as the stream's flow-control window allows
  POST /echo        -> 200, the request body back
  POST /grpc        -> 200 content-type application/grpc, the request body back, then trailers
                       grpc-status: 0, grpc-message: ok
  GET  /reset       -> RST_STREAM(ENHANCE_YOUR_CALM) without a response
  GET  /goaway      -> 200 "bye", then GOAWAY(ENHANCE_YOUR_CALM)
  GET  /many-103    -> 40 × 103 Early Hints, then 200
  POST /answer-reset -> 200 at once (its body not awaited), then RST_STREAM(NO_ERROR), as servers stop an upload
  POST /answer-reset-body -> the same with a 1000-byte body
  GET  /status/<s>  -> :status <s> as given (abc, 0200, 099: for the proxy to refuse), no body
  GET  /close-after/<n> -> 200, <n> bytes, then GOAWAY(NO_ERROR) and the TCP connection closed at once
  CONNECT :protocol websocket (RFC 8441, offered with --connect-protocol) -> 200, then every DATA byte echoed;
                       DATA of exactly "CLOSE" closes the whole connection at once
Every request is printed as "REQUEST <method> <path> <protocol or ->" once its head is in, the client's settings
as "SETTINGS <code>=<value> ..." when they arrive.
Prints "PORT <n>" once it listens.
"""
import argparse
import asyncio
import ssl
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


class Connection:
    def __init__(self, reader, writer, connect_protocol):
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False, validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.connect_protocol = connect_protocol
        self.window_open = asyncio.Event()
        self.requests = {}  # stream id -> {"headers": dict, "body": bytearray}
        self.tunnels = set()
        self.tasks = set()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def run(self):
        self.conn.initiate_connection()
        if self.connect_protocol:
            self.conn.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        self.flush()
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as error:
                    print(f"PROTOCOL_ERROR {error}", flush=True)
                    self.flush()
                    break
                for event in events:
                    self.handle(event)
                self.flush()
                try:
                    await self.writer.drain()
                except ConnectionError:
                    break
        finally:
            for task in self.tasks:
                task.cancel()
            self.writer.close()

    def handle(self, event):
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers)
            self.requests[event.stream_id] = {"headers": headers, "body": bytearray()}
            print(f"REQUEST {headers.get(':method')} {headers.get(':path')} {headers.get(':protocol', '-')}", flush=True)
            if headers.get(":method") == "CONNECT" and headers.get(":protocol"):
                self.tunnels.add(event.stream_id)
                self.conn.send_headers(event.stream_id, [(":status", "200")])
            elif headers.get(":path") == "/answer-reset":  # answered at once, then the rest of the upload refused
                del self.requests[event.stream_id]
                self.conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "0")], end_stream=True)
                self.conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
            elif headers.get(":path") == "/answer-reset-body":  # the same, with a 1000-byte body before the reset
                del self.requests[event.stream_id]
                self.conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "1000")])
                self.conn.send_data(event.stream_id, b"x" * 1000, end_stream=True)
                self.conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
            elif headers.get(":path") == "/reset":
                del self.requests[event.stream_id]
                self.conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            elif event.stream_ended is not None:
                self.respond(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self.tunnels and event.data == b"CLOSE":
                self.writer.close()  # the whole connection, abruptly, with the tunnel open
            elif event.stream_id in self.tunnels:
                self.spawn(self.send_body(event.stream_id, event.data, end=False))
            elif event.stream_id in self.requests:
                self.requests[event.stream_id]["body"] += event.data
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.tunnels:
                self.spawn(self.send_body(event.stream_id, b"", end=True))
            elif event.stream_id in self.requests:
                self.respond(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = " ".join(f"{int(code)}={setting.new_value}" for code, setting in sorted(event.changed_settings.items()))
            print(f"SETTINGS {changed}", flush=True)
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)
            self.window_open.set()

    def spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def respond(self, stream_id):
        request = self.requests.get(stream_id)
        if request is None or request.get("answered"):
            return
        request["answered"] = True
        method = request["headers"].get(":method")
        path = request["headers"].get(":path", "").split("?")[0]
        if path.startswith("/size/"):
            body = (b"0123456789" * (int(path[6:]) // 10 + 1))[: int(path[6:])]
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
            self.spawn(self.send_body(stream_id, body))
        elif path == "/echo" and method == "POST":
            body = bytes(request["body"])
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
            self.spawn(self.send_body(stream_id, body))
        elif path.startswith("/close-after/"):
            body = b"x" * int(path[13:])
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
            self.spawn(self.send_body(stream_id, body, then_close=True))
        elif path == "/many-103":  # 40 informational heads before the response
            for _ in range(40):
                self.conn.send_headers(stream_id, [(":status", "103"), ("link", "</x.css>; rel=preload")])
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", "0")], end_stream=True)
        elif path.startswith("/status/"):  # any :status value, valid or not
            self.conn.send_headers(stream_id, [(":status", path[8:]), ("content-length", "0")], end_stream=True)
        elif path == "/goaway":
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", "3")])
            self.conn.send_data(stream_id, b"bye", end_stream=True)
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        elif path == "/grpc" and method == "POST":
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
            self.spawn(self.send_body(stream_id, bytes(request["body"]), trailers=[("grpc-status", "0"), ("grpc-message", "ok")]))
        else:
            self.conn.send_headers(stream_id, [(":status", "404"), ("content-length", "0")], end_stream=True)

    async def send_body(self, stream_id, body, end=True, trailers=None, then_close=False):
        """Sends `body` as the stream's and the connection's windows allow (bounded by the stream's life)."""
        view = memoryview(body)
        try:
            while view:
                if stream_id not in self.conn.streams or self.conn.streams[stream_id].closed:
                    return
                window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if window <= 0:
                    self.window_open.clear()
                    await self.window_open.wait()
                    continue
                self.conn.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
                self.flush()
                await self.writer.drain()
            if trailers:
                self.conn.send_headers(stream_id, trailers, end_stream=True)
            elif end:
                self.conn.end_stream(stream_id)
            self.flush()
            await self.writer.drain()
            if then_close:
                self.conn.close_connection()
                self.flush()
                await self.writer.drain()
                self.writer.close()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            return


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--alpn", default="h2")
    parser.add_argument("--connect-protocol", action="store_true")
    arguments = parser.parse_args()
    # Loopback, or the test network namespaces' own ranges (TransparentTests' NetworkLab).
    if arguments.host not in ("127.0.0.1", "::1", "localhost") and not arguments.host.startswith(("10.250.0.", "fd00:6b7a:")):
        sys.exit("loopback or the test lab's addresses only")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(arguments.cert, arguments.key)
    context.set_alpn_protocols(arguments.alpn.split(","))

    async def accept(reader, writer):
        await Connection(reader, writer, arguments.connect_protocol).run()

    server = await asyncio.start_server(accept, arguments.host, arguments.port, ssl=context)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
