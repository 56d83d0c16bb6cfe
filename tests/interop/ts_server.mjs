// A TypeScript SDK MCP server for mcplb's interop tests, plain ESM (no build step).
//
//   node ts_server.mjs --name NAME --port PORT [--parent-pid PID]
//
// Serves both transports on 127.0.0.1:PORT, as a TypeScript SDK server does:
//   /mcp                Streamable HTTP, stateful, resumable (an in-memory event store);
//   /sse + /message     the 2024-11-05 HTTP+SSE transport (POSTs carry ?sessionId=<id>);
//   GET /debug/sessions {"sessions": N}: live sessions of both transports, as the Python
//                       demo backend answers, so a test can count them on every backend.
// Tools: whoami (the server's name), add(a, b), countdown(n, delay) with progress
// notifications, bump (updates the resource demo://counter: the calling session, if it
// subscribed, gets notifications/resources/updated, which Streamable HTTP sends on the
// session's GET stream).
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { SSEServerTransport } from "@modelcontextprotocol/sdk/server/sse.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const { values: args } = parseArgs({
  options: {
    name: { type: "string" },
    port: { type: "string" },
    "parent-pid": { type: "string" },
  },
});
const NAME = args.name;
const COUNTER_URI = "demo://counter";
let counter = 0;

const TOOLS = [
  { name: "whoami", description: "The backend's name.", inputSchema: { type: "object" } },
  {
    name: "add",
    description: "Add two integers.",
    inputSchema: {
      type: "object",
      properties: { a: { type: "integer" }, b: { type: "integer" } },
      required: ["a", "b"],
    },
  },
  {
    name: "countdown",
    description: "n progress notifications, one every `delay` seconds, then liftoff.",
    inputSchema: {
      type: "object",
      properties: { n: { type: "integer" }, delay: { type: "number" } },
    },
  },
  { name: "bump", description: "Update demo://counter.", inputSchema: { type: "object" } },
];

const text = (value) => ({ content: [{ type: "text", text: String(value) }] });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Every MCP session has its own Server object (the SDK binds one transport per server);
// the subscribers of the counter are the servers whose client subscribed to it. Only the
// session that bumps is notified: an update racing another session's shutdown would only
// test that client's teardown.
const subscribers = new Set();

function buildServer() {
  const server = new Server(
    { name: NAME, version: "1.0.0" },
    { capabilities: { tools: {}, resources: { subscribe: true } } },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const params = request.params.arguments ?? {};
    switch (request.params.name) {
      case "whoami":
        return text(NAME);
      case "add":
        return text(params.a + params.b);
      case "countdown": {
        const n = Math.min(Math.max(params.n ?? 5, 1), 100);
        const delay = Math.min(Math.max(params.delay ?? 0.2, 0), 5);
        const token = request.params._meta?.progressToken;
        for (let i = 1; i <= n; i++) {
          if (token !== undefined) {
            await extra.sendNotification({
              method: "notifications/progress",
              params: { progressToken: token, progress: i, total: n, message: `${n - i} left` },
            });
          }
          await sleep(delay * 1000);
        }
        return text("liftoff");
      }
      case "bump":
        counter += 1;
        // Not tied to this request: Streamable HTTP sends it on the GET stream.
        if (subscribers.has(server)) await server.sendResourceUpdated({ uri: COUNTER_URI });
        return text(counter);
      default:
        return { ...text(`unknown tool ${request.params.name}`), isError: true };
    }
  });
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: [{ uri: COUNTER_URI, name: "counter", mimeType: "text/plain" }],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => ({
    contents: [{ uri: request.params.uri, mimeType: "text/plain", text: String(counter) }],
  }));
  server.setRequestHandler(SubscribeRequestSchema, async () => {
    subscribers.add(server);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async () => {
    subscribers.delete(server);
    return {};
  });
  server.onclose = () => subscribers.delete(server);
  return server;
}

// Resumability: every SSE event gets an id; GET with Last-Event-ID replays what followed.
class MemoryEventStore {
  events = new Map(); // eventId -> {streamId, message}
  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${this.events.size}_${randomUUID().slice(0, 8)}`;
    this.events.set(eventId, { streamId, message });
    return eventId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (last === undefined) return "";
    let after = false;
    for (const [eventId, { streamId, message }] of this.events) {
      if (after && streamId === last.streamId) await send(eventId, message);
      after = after || eventId === lastEventId;
    }
    return last.streamId;
  }
}

const streamable = new Map(); // session id -> StreamableHTTPServerTransport
const legacy = new Map(); // session id -> SSEServerTransport

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined);
      } catch (error) {
        reject(error);
      }
    });
    req.on("error", reject);
  });
}

function answer(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

async function handleMcp(req, res) {
  const sessionId = req.headers["mcp-session-id"];
  const body = req.method === "POST" ? await readJson(req) : undefined;
  let transport = sessionId === undefined ? undefined : streamable.get(sessionId);
  if (transport === undefined) {
    if (sessionId !== undefined || req.method !== "POST" || body?.method !== "initialize") {
      // What the SDK's own examples answer: 404 for an unknown id, else 400.
      const status = sessionId !== undefined ? 404 : 400;
      const message = status === 404 ? "Session not found" : "Bad Request: No valid session ID";
      answer(res, status, { jsonrpc: "2.0", error: { code: -32000, message }, id: null });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new MemoryEventStore(),
      onsessioninitialized: (id) => streamable.set(id, transport),
      onsessionclosed: (id) => streamable.delete(id),
    });
    transport.onclose = () => {
      if (transport.sessionId) streamable.delete(transport.sessionId);
    };
    await buildServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

async function handleSse(req, res) {
  const transport = new SSEServerTransport("/message", res);
  legacy.set(transport.sessionId, transport);
  res.on("close", () => legacy.delete(transport.sessionId));
  await buildServer().connect(transport);
}

async function handleMessage(req, res, url) {
  const transport = legacy.get(url.searchParams.get("sessionId") ?? "");
  if (transport === undefined) {
    answer(res, 404, { error: "Could not find session" });
    return;
  }
  await transport.handlePostMessage(req, res);
}

const http = createServer(async (req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  try {
    if (url.pathname === "/mcp") await handleMcp(req, res);
    else if (url.pathname === "/sse" && req.method === "GET") await handleSse(req, res);
    else if (url.pathname === "/message" && req.method === "POST") await handleMessage(req, res, url);
    else if (url.pathname === "/debug/sessions") {
      answer(res, 200, { sessions: streamable.size + legacy.size });
    } else answer(res, 404, { error: "not found" });
  } catch (error) {
    console.error(error);
    if (!res.headersSent) answer(res, 500, { error: String(error) });
  }
});
http.listen(Number(args.port), "127.0.0.1", () => console.error(`${NAME} listening on ${args.port}`));

// Exit with the test process that started us, even if it was killed: no orphan holds a port.
const parent = args["parent-pid"] === undefined ? undefined : Number(args["parent-pid"]);
if (parent !== undefined) {
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
  }, 500).unref();
}
const stop = () => {
  http.close();
  http.closeAllConnections();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
