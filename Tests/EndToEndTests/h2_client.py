"""An HTTP/2 client (Python `h2`) that reaches an origin through the proxy: CONNECT, TLS with ALPN h2 verified
against the inspection CA, then one of these scenarios, printing one JSON object with what it saw:

  streams    --count N --size B --stall K --stall-size S: N concurrent streams on one connection; the first K
             (GET /size/S) are never read (their stream windows are never opened again; the connection window
             is), the others (GET /size/B) must complete
  grpc       POST /grpc with content-type application/grpc: the response headers, body and trailers
  websocket  extended CONNECT (RFC 8441) with :protocol websocket, once the proxy offers it; bytes echoed
  reset      GET /reset: the RST_STREAM code that arrives
  bigheader  a request whose header list is larger than --size bytes: what the proxy answers
  badstream  a POST whose content-length (10) its body (5 bytes) contradicts, then GET /size/5 on the same
             connection: the first stream's reset code and the second's status
  goaway     GET /goaway (the origin answers, then sends GOAWAY): the response and the GOAWAY's code
  settings   the proxy's SETTINGS toward the client
  odd        on one connection: GET with an absolute :path, GET /status/abc, /status/0200, /status/099 (statuses
             the origin sends as given), then GET /size/5: each stream's status and reset code
  answered   --count POST /answer-reset (answered, then RST_STREAM NO_ERROR from the origin), then GET /size/5
  flood      a stream not read, then --count WINDOW_UPDATE frames on it (or, with --path, a GET of that path):
             whether the proxy closed the connection
  burst      --count GET /size/10 streams in one write before the proxy's SETTINGS are acknowledged: how many
             were answered and how many refused (REFUSED_STREAM)
  cancelled  DELETE /echo and its RST_STREAM(CANCEL) in one write, then GET /size/5: the second's status
  tunnels    on one connection: a CONNECT without :protocol, an extended CONNECT for connect-udp, then GET /size/5:
             each stream's status and reset code
  authority  on one connection: GET with :authority blocked%2eexample, GET with a host field blocked.example/x, then
             GET /size/5: each stream's status and reset code
  malformed  on one connection: GET /size/5 with an uppercase field name, then with a connection-specific field
             (`connection: keep-alive`), then GET /size/5: each stream's status and reset code
  idle       prints READY once connected, then (not JSON) "GOAWAY <code>" when one arrives and CLOSED when the
             proxy closes the connection

Every wait is bounded by --timeout seconds.
"""
import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


def connect(arguments):
    if arguments.proxy_host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("loopback only")
    sock = socket.create_connection((arguments.proxy_host, arguments.proxy_port), timeout=arguments.timeout)
    target = f"{arguments.host}:{arguments.port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            sys.exit("proxy closed during CONNECT")
        head += chunk
    if b" 200 " not in head.split(b"\r\n")[0]:
        sys.exit(f"CONNECT refused: {head!r}")
    context = ssl.create_default_context(cafile=arguments.ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    tls = context.wrap_socket(sock, server_hostname=arguments.host)
    if tls.selected_alpn_protocol() != "h2":
        sys.exit(f"ALPN: {tls.selected_alpn_protocol()}")
    # `odd`, `malformed` and `authority` send what h2 would refuse to send (an absolute :path, an uppercase field
    # name, a host field that disagrees with :authority).
    lax = arguments.scenario in ("odd", "malformed", "authority")
    config = h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=not lax,
        normalize_outbound_headers=not lax)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


class Client:
    def __init__(self, arguments):
        self.arguments = arguments
        self.sock, self.conn = connect(arguments)
        self.deadline = time.monotonic() + arguments.timeout
        self.remote_settings = {}

    def authority(self):
        return f"{self.arguments.host}:{self.arguments.port}"

    def request_headers(self, method, path, extra=()):
        return [(":method", method), (":scheme", "https"), (":authority", self.authority()), (":path", path)] + list(extra)

    def pump(self):
        """Reads once (bounded by the deadline) and returns the events."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed")
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                for code, setting in event.changed_settings.items():
                    self.remote_settings[int(code)] = setting.new_value
        self.flush()
        return events

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)


def streams(client, arguments):
    ids = []
    for index in range(arguments.count):
        stream_id = client.conn.get_next_available_stream_id()
        size = arguments.stall_size if index < arguments.stall else arguments.size
        client.conn.send_headers(stream_id, client.request_headers("GET", f"/size/{size}"), end_stream=True)
        ids.append(stream_id)
        client.flush()
    stalled = set(ids[: arguments.stall])
    received = {stream_id: 0 for stream_id in ids}
    ended = set()
    statuses = {}
    while len(ended | stalled) < len(ids):
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout, ConnectionError) as error:
            break
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers).get(":status")
            elif isinstance(event, h2.events.DataReceived):
                received[event.stream_id] += len(event.data)
                if event.stream_id in stalled:
                    # Never read: the stream's window stays shut; the connection's is opened so others go on.
                    client.conn.increment_flow_control_window(event.flow_controlled_length)
                else:
                    client.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        client.flush()
    if arguments.hold:
        # Keep the connection (reading, acknowledging nothing stalled) for --hold seconds, for a memory reading.
        print("HOLDING", flush=True)
        hold_until = time.monotonic() + arguments.hold
        while time.monotonic() < hold_until:
            client.deadline = min(hold_until, time.monotonic() + 1)
            try:
                for event in client.pump():
                    if isinstance(event, h2.events.DataReceived):
                        received[event.stream_id] += len(event.data)
                        client.conn.increment_flow_control_window(event.flow_controlled_length)
                client.flush()
            except (TimeoutError, socket.timeout):
                pass
    completed = [s for s in ids if s in ended and s not in stalled and received[s] == arguments.size]
    return {
        "completed": len(completed),
        "statuses": sorted(set(statuses.values())),
        "stalled_received": [received[s] for s in sorted(stalled)],
        "stalled_ended": len(stalled & ended),
    }


def collect(client, stream_id, ack=True):
    """Headers, body, trailers and reset code of one stream, until it ends."""
    result = {"headers": None, "body": b"", "trailers": None, "reset": None, "goaway": None}
    while True:
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout, ConnectionError) as error:
            result["error"] = str(error)
            break
        done = False
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = int(event.error_code)
                # A graceful GOAWAY covering this stream lets it finish; otherwise it is over.
                if int(event.error_code) != 0 or event.last_stream_id is None or event.last_stream_id < stream_id:
                    done = True
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                result["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                result["body"] += event.data
                client.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                result["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                done = True
            elif isinstance(event, h2.events.StreamReset):
                result["reset"] = int(event.error_code)
                done = True
        client.flush()
        if done:
            break
    return result


def grpc(client, arguments):
    stream_id = client.conn.get_next_available_stream_id()
    message = b"\x00\x00\x00\x00\x05hello"
    client.conn.send_headers(
        stream_id,
        client.request_headers("POST", "/grpc", [("content-type", "application/grpc"), ("te", "trailers")]),
    )
    client.conn.send_data(stream_id, message, end_stream=True)
    client.flush()
    result = collect(client, stream_id)
    return {
        "status": (result["headers"] or {}).get(":status"),
        "content_type": (result["headers"] or {}).get("content-type"),
        "body_matches": result["body"] == message,
        "trailers": result["trailers"],
        "reset": result["reset"],
    }


def websocket(client, arguments):
    # The proxy offers extended CONNECT only once the upstream has: wait for that SETTINGS.
    enable = int(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
    while client.remote_settings.get(enable) != 1:
        client.pump()
    stream_id = client.conn.get_next_available_stream_id()
    headers = [
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/chat?room=1"),
        (":authority", client.authority()), ("sec-websocket-version", "13"),
    ]
    client.conn.send_headers(stream_id, headers)
    client.flush()
    status = None
    while status is None:
        for event in client.pump():
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = dict(event.headers).get(":status")
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                return {"status": None, "reset": int(event.error_code)}
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked text frame, "Hello"
    client.conn.send_data(stream_id, frame)
    client.flush()
    echoed = b""
    while len(echoed) < len(frame):
        for event in client.pump():
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                echoed += event.data
                client.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        client.flush()
    if not arguments.cut:
        client.conn.end_stream(stream_id)
        client.flush()
        return {"status": status, "echoed": echoed == frame}
    # The origin drops its connection with the tunnel open: the tunnel's stream must end, not hang.
    client.conn.send_data(stream_id, b"CLOSE")
    client.flush()
    ended = None
    while ended is None:
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout, ConnectionError) as error:
            ended = f"connection: {type(error).__name__}"
            break
        for event in events:
            if isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                ended = f"reset {int(event.error_code)}"
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                ended = "ended"
    return {"status": status, "echoed": echoed == frame, "ended": ended}


def reset(client, arguments):
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, client.request_headers("GET", "/reset"), end_stream=True)
    client.flush()
    result = collect(client, stream_id)
    return {"reset": result["reset"], "status": (result["headers"] or {}).get(":status")}


def burst(client, arguments):
    """--count GET /size/10 streams sent at once, before the proxy's SETTINGS are read (so not yet acknowledged):
    how many were answered and how many refused (RST_STREAM REFUSED_STREAM)."""
    ids = []
    for _ in range(arguments.count):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.request_headers("GET", "/size/10"), end_stream=True)
        ids.append(stream_id)
    client.flush()
    answered, refused, other = set(), set(), {}
    while len(answered | refused | set(other)) < len(ids):
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout, ConnectionError):
            break
        for event in events:
            if isinstance(event, h2.events.StreamEnded):
                answered.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                if int(event.error_code) == 7:
                    refused.add(event.stream_id)
                else:
                    other[event.stream_id] = int(event.error_code)
            elif isinstance(event, h2.events.DataReceived):
                client.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        client.flush()
    return {"answered": len(answered), "refused": len(refused), "other": len(other)}


def flood(client, arguments):
    """GET /size/1000000 without reading it (its window never reopened), then --count WINDOW_UPDATE frames on that
    stream: whether the proxy closed the connection. With --path, just GET that path (an origin's flood)."""
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, client.request_headers("GET", arguments.path or "/size/1000000"), end_stream=True)
    client.flush()
    for _ in range(0 if arguments.path else arguments.count):
        client.conn.increment_flow_control_window(1, stream_id)
    try:
        client.flush()
    except OSError:
        return {"closed": True}
    while True:
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout):
            return {"closed": False}
        except (ConnectionError, OSError, ssl.SSLError):
            return {"closed": True}
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return {"closed": True, "goaway": int(event.error_code)}


def answered(client, arguments):
    """--count POST /answer-reset (or --path) without ending the request (the origin answers, then resets with
    NO_ERROR), one after another on one connection, then GET /size/5: how many were answered, the bytes of the last
    answer's body, and the last one's status."""
    ok = 0
    body = 0
    for _ in range(arguments.count):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, client.request_headers("POST", arguments.path or "/answer-reset"), end_stream=False)
        client.flush()
        result = collect(client, stream_id)
        body = len(result["body"])
        if (result["headers"] or {}).get(":status") == "200":
            ok += 1
        if "error" in result or result.get("goaway"):
            break
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, client.request_headers("GET", "/size/5"), end_stream=True)
    client.flush()
    last = collect(client, stream_id)
    return {"answered": ok, "body": body, "after": (last["headers"] or {}).get(":status")}


def cancelled(client, arguments):
    """DELETE /echo with END_STREAM and RST_STREAM(CANCEL) in one write, then GET /size/5 on the same connection."""
    first = client.conn.get_next_available_stream_id()
    client.conn.send_headers(first, client.request_headers("DELETE", "/echo"), end_stream=True)
    client.conn.reset_stream(first, error_code=8)  # CANCEL
    client.flush()
    second = client.conn.get_next_available_stream_id()
    client.conn.send_headers(second, client.request_headers("GET", "/size/5"), end_stream=True)
    client.flush()
    result = collect(client, second)
    return {"status": (result["headers"] or {}).get(":status")}


def one_by_one(client, streams):
    """Opens each (label, headers, end_stream) in turn on the connection and waits for it: {label: {status, reset,
    goaway}}."""
    results = {}
    for label, headers, end in streams:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, headers, end_stream=end)
        client.flush()
        result = collect(client, stream_id)
        results[label] = {"status": (result["headers"] or {}).get(":status"), "reset": result["reset"],
                          "goaway": result["goaway"]}
    return results


def odd(client, arguments):
    return one_by_one(client, [
        (label, client.request_headers("GET", path), True)
        for label, path in [("absolute", "https://evil.example/x"), ("abc", "/status/abc"), ("0200", "/status/0200"),
                            ("099", "/status/099"), ("after", "/size/5")]])


def tunnels(client, arguments):
    """A CONNECT without :protocol, then an extended CONNECT for connect-udp (MASQUE), then GET /size/5: each one's
    status and reset code (the extended one once the proxy offers extended CONNECT)."""
    enable = int(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
    while client.remote_settings.get(enable) != 1:
        client.pump()
    return one_by_one(client, [
        ("connect", [(":method", "CONNECT"), (":authority", "other.example:443")], False),
        ("connect-udp", [(":method", "CONNECT"), (":protocol", "connect-udp"), (":scheme", "https"),
                         (":path", "/.well-known/masque/udp/evil.example/443/"), (":authority", client.authority())], False),
        ("after", client.request_headers("GET", "/size/5"), True),
    ])


def authority(client, arguments):
    """GET with :authority blocked%2eexample, then with a host field blocked.example/x, then GET /size/5: each one's
    status and reset code."""
    return one_by_one(client, [
        ("authority", [(":method", "GET"), (":scheme", "https"), (":authority", "blocked%2eexample"), (":path", "/size/5")], True),
        ("host", client.request_headers("GET", "/size/5", [("host", "blocked.example/x")]), True),
        ("after", client.request_headers("GET", "/size/5"), True),
    ])


def malformed(client, arguments):
    return one_by_one(client, [
        (label, client.request_headers("GET", "/size/5", extra), True)
        for label, extra in [("uppercase", [("X-Upper", "1")]), ("connection", [("connection", "keep-alive")]),
                             ("after", [])]])


def bigheader(client, arguments):
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(
        stream_id, client.request_headers("GET", "/size/10", [("x-big", "a" * arguments.size)]), end_stream=True)
    client.flush()
    result = collect(client, stream_id)
    # Then whether the connection still serves a normal request (a stream error) or is gone (a GOAWAY).
    after = None
    try:
        second = client.conn.get_next_available_stream_id()
        client.conn.send_headers(second, client.request_headers("GET", "/size/10"), end_stream=True)
        client.flush()
        after = collect(client, second)
    except Exception as error:  # the connection was closed by the proxy
        after = {"error": type(error).__name__}
    return {
        "status": (result["headers"] or {}).get(":status"),
        "reset": result["reset"],
        "goaway": result["goaway"],
        "error": result.get("error"),
        "after": (after.get("headers") or {}).get(":status") if isinstance(after, dict) else None,
    }


def badstream(client, arguments):
    first = client.conn.get_next_available_stream_id()
    client.conn.send_headers(first, client.request_headers("POST", "/echo", [("content-length", "10")]))
    client.conn.send_data(first, b"hello", end_stream=True)
    client.flush()
    bad = collect(client, first)
    second = client.conn.get_next_available_stream_id()
    client.conn.send_headers(second, client.request_headers("GET", "/size/5"), end_stream=True)
    client.flush()
    good = collect(client, second)
    return {
        "bad_reset": bad["reset"], "bad_status": (bad["headers"] or {}).get(":status"),
        "good_status": (good["headers"] or {}).get(":status"), "good_body": good["body"].decode(),
        "goaway": bad["goaway"] or good["goaway"],
    }


def goaway(client, arguments):
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, client.request_headers("GET", "/goaway"), end_stream=True)
    client.flush()
    result = collect(client, stream_id)
    code = result["goaway"]
    while code is None:
        try:
            events = client.pump()
        except (TimeoutError, socket.timeout, ConnectionError):
            break
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                code = int(event.error_code)
    return {"status": (result["headers"] or {}).get(":status"), "body": result["body"].decode(), "goaway": code}


def settings(client, arguments):
    while int(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE) not in client.remote_settings:
        client.pump()
    return {str(code): value for code, value in client.remote_settings.items()}


def idle(client, arguments):
    while int(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE) not in client.remote_settings:
        client.pump()
    print("READY", flush=True)
    while True:
        try:
            events = client.pump()
        except ConnectionError:
            print("CLOSED", flush=True)
            return None
        except (TimeoutError, socket.timeout):
            print("TIMEOUT", flush=True)
            return None
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                print(f"GOAWAY {int(event.error_code)}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario", choices=["streams", "grpc", "websocket", "reset", "bigheader", "badstream", "goaway", "settings", "idle", "odd",
                     "malformed", "cancelled", "burst", "flood", "answered", "tunnels", "authority"])
    parser.add_argument("--proxy-host", default="127.0.0.1")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--stall", type=int, default=0)
    parser.add_argument("--stall-size", type=int, default=4_000_000)
    parser.add_argument("--hold", type=float, default=0, help="streams: keep the connection this long afterwards")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--path", help="flood: the path to GET instead (the origin floods)")
    parser.add_argument("--cut", action="store_true", help="websocket: then have the origin drop its connection")
    arguments = parser.parse_args()
    client = Client(arguments)
    result = globals()[arguments.scenario](client, arguments)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
