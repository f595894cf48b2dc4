// A Node.js client through the proxy (Node's own TLS stack, its bundled OpenSSL): CONNECT, then TLS trusting
// NODE_EXTRA_CA_CERTS (the inspection CA), then one GET over HTTP/1.1 or HTTP/2. Prints one JSON object.
//   node node_client.js PROXY_PORT HOST PORT PATH h1|h2
"use strict";
const http = require("http"), tls = require("tls"), http2 = require("http2");
const [proxyPort, host, port, path, protocol] = process.argv.slice(2);
const result = {};
const done = (extra) => { Object.assign(result, extra); console.log(JSON.stringify(result)); process.exit(0); };
setTimeout(() => done({ error: "timed out" }), 15000).unref();

const connect = http.request({ host: "127.0.0.1", port: Number(proxyPort), method: "CONNECT", path: `${host}:${port}` });
connect.on("error", (e) => done({ error: `CONNECT: ${e.message}` }));
connect.on("connect", (response, socket) => {
  if (response.statusCode !== 200) return done({ error: `CONNECT answered ${response.statusCode}` });
  const alpn = protocol === "h2" ? ["h2"] : ["http/1.1"];
  const secure = tls.connect({ socket, servername: host, ALPNProtocols: alpn });
  secure.on("error", (e) => done({ error: e.message, code: e.code }));
  secure.on("secureConnect", () => {
    result.authorized = secure.authorized;
    result.alpn = secure.alpnProtocol;
    result.issuer = secure.getPeerCertificate().issuer.CN;
    if (protocol === "h2") {
      const session = http2.connect(`https://${host}:${port}`, { createConnection: () => secure });
      session.on("error", (e) => done({ error: e.message }));
      const stream = session.request({ ":path": path });
      let bytes = 0;
      stream.on("response", (headers) => { result.status = headers[":status"]; });
      stream.on("data", (chunk) => { bytes += chunk.length; });
      stream.on("end", () => { session.close(); done({ bytes }); });
    } else {
      let text = "";
      secure.on("data", (chunk) => { text += chunk; });
      secure.on("end", () => {
        const [head, body] = text.split("\r\n\r\n");
        done({ status: Number(head.split(" ")[1]), body });
      });
      secure.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nConnection: close\r\n\r\n`);
    }
  });
});
connect.end();
