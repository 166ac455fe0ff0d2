// Bun peer (npm package `bun` 1.4.4, whose WebSocket server is uWebSockets; bench/peers/install
// puts it under bench/peers/bun/), wired as the nchan peer: ws://127.0.0.1:PORT/sub/<id> joins
// topic <id> AND the broadcast topic "all" (any other path: "all" only); `POST /pub/<id>`
// publishes the body to that topic (`/pub/all`: every socket) and answers the bytes published
// (0: no socket subscribed). Usage: bun bun_pubsub.js PORT   (default 8097; the suite starts it)
const port = Number(process.argv[2] || 8097);
const channel = (path, prefix) => {
  const m = path.match(prefix);
  return m ? m[1] : null;
};
Bun.serve({
  port,
  hostname: "127.0.0.1",
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (req.method === "POST") {
      const ch = channel(path, /^\/pub\/([A-Za-z0-9_-]+)$/);
      if (!ch) return new Response("no such channel", { status: 404 });
      return req.text().then((t) => new Response(String(server.publish(ch, t))));
    }
    if (server.upgrade(req, { data: channel(path, /^\/sub\/([A-Za-z0-9_-]+)$/) })) return;
    return new Response("upgrade required", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false, // as the other peers in the plain scenarios: no compression
    idleTimeout: 0, // no idle close and no pings in a measured window
    sendPings: false,
    open(ws) {
      ws.subscribe("all");
      if (ws.data && ws.data !== "all") ws.subscribe(ws.data);
    },
    message() {},
  },
});
console.log("listening", port);
