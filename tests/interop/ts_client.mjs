// TypeScript SDK MCP clients for mcplb's interop tests, plain ESM (no build step).
//
//   node ts_client.mjs --url URL --transport streamable|sse [--sessions N] [--concurrency C]
//                      [--steps full|calls] [--fresh-connections]
//
// Runs N sessions (C at a time) against URL (.../mcp or .../sse) and prints one JSON line:
//   {"sessions": [{"ok": bool, "names": [...], "token": "...", "error": "...", "steps": [...]}]}
// "names" are the whoami answers of the session (one name: the session stayed on one
// backend), "token" the session id the client ended up holding (Streamable HTTP), "steps"
// the operations that succeeded. With --steps full a session does: initialize, tools/list,
// tools/call, a call with progress notifications, a resource subscription with its update
// (on the GET stream for Streamable HTTP), a Last-Event-ID resume (Streamable HTTP), whoami
// again, and DELETE (Streamable HTTP). --steps calls: initialize and six calls, DELETE.
// --fresh-connections: a new TCP connection for every request (no keep-alive), so that
// behind a TCP alternator consecutive requests of a session reach different replicas.
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { Agent, fetch as undiciFetch } from "undici";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    transport: { type: "string", default: "streamable" },
    sessions: { type: "string", default: "1" },
    concurrency: { type: "string", default: "1" },
    steps: { type: "string", default: "full" },
    "fresh-connections": { type: "boolean", default: false },
  },
});
// undici's pipelining: 0 turns keep-alive off.
const agent = args["fresh-connections"] ? new Agent({ pipelining: 0 }) : undefined;
const fetchVia =
  agent === undefined ? fetch : (url, init) => undiciFetch(url, { ...init, dispatcher: agent });
const TIMEOUT_MS = 20000;

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const textOf = (result) => result.content.map((block) => block.text ?? "").join("");

// GET with Last-Event-ID on the session: the backend must replay what followed that event.
async function resume(url, transport, lastEventId) {
  const controller = new AbortController();
  const response = await fetchVia(url, {
    headers: {
      accept: "text/event-stream",
      "mcp-session-id": transport.sessionId,
      "mcp-protocol-version": transport.protocolVersion,
      "last-event-id": lastEventId,
    },
    signal: controller.signal,
  });
  if (response.status !== 200) throw new Error(`resume: status ${response.status}`);
  const reader = response.body.getReader();
  let seen = "";
  try {
    while (!seen.includes("liftoff")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`resume: stream ended before the replayed result: ${seen}`);
      seen += new TextDecoder().decode(value);
    }
  } finally {
    controller.abort();
  }
}

async function session(url, kind, steps) {
  const record = { ok: false, names: [], token: null, error: null, steps: [] };
  const done = (step) => record.steps.push(step);
  const client = new Client({ name: "mcplb-interop-ts", version: "1.0.0" });
  let updated;
  const update = new Promise((resolve) => {
    updated = resolve;
  });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => updated(n.params.uri));
  const transport =
    kind === "sse"
      ? new SSEClientTransport(new URL(url), { fetch: fetchVia })
      : new StreamableHTTPClientTransport(new URL(url), { fetch: fetchVia });
  const whoami = async () => {
    const result = await withTimeout(client.callTool({ name: "whoami", arguments: {} }), "whoami");
    record.names.push(textOf(result));
  };
  try {
    await withTimeout(client.connect(transport), "initialize");
    done("initialize");
    if (steps === "calls") {
      for (let i = 0; i < 6; i++) await whoami();
      done("calls");
    } else {
      const tools = await withTimeout(client.listTools(), "tools/list");
      if (!tools.tools.some((t) => t.name === "countdown")) throw new Error("no countdown tool");
      done("tools/list");
      await whoami();
      const sum = await withTimeout(client.callTool({ name: "add", arguments: { a: 2, b: 3 } }), "add");
      if (textOf(sum) !== "5") throw new Error(`add gave ${textOf(sum)}`);
      done("tools/call");
      let progress = 0;
      let firstEvent;
      // The SDK (1.32, shared/protocol.js) runs a notification's handler in a microtask but
      // a response's at once, and drops the request's progress handler with the response:
      // progress events read in the same chunk as the result are lost to the client, direct
      // or through any proxy. On a loaded machine 50 ms apart was not apart enough for the
      // reader (2 of 7 matrix cells failed on 63b7940 at a load average of 10): 250 ms.
      const countdown = await withTimeout(
        client.callTool({ name: "countdown", arguments: { n: 3, delay: 0.25 } }, undefined, {
          onprogress: () => {
            progress += 1;
          },
          onresumptiontoken: (token) => {
            firstEvent ??= token;
          },
          resetTimeoutOnProgress: true,
        }),
        "countdown",
      );
      if (textOf(countdown) !== "liftoff" || progress !== 3) {
        throw new Error(`countdown: ${textOf(countdown)} after ${progress} progress notifications`);
      }
      done("progress");
      await withTimeout(client.subscribeResource({ uri: "demo://counter" }), "subscribe");
      await withTimeout(client.callTool({ name: "bump", arguments: {} }), "bump");
      const uri = await withTimeout(update, "resource update");
      if (uri !== "demo://counter") throw new Error(`update for ${uri}`);
      done("subscription");
      if (kind !== "sse") {
        if (firstEvent === undefined) throw new Error("the countdown stream had no event ids");
        await withTimeout(resume(url, transport, firstEvent), "resume");
        done("resume");
      }
      await whoami();
    }
    if (kind !== "sse") {
      record.token = transport.sessionId;
      await withTimeout(transport.terminateSession(), "DELETE");
      done("delete");
    }
    record.ok = true;
  } catch (error) {
    record.error = String(error?.stack ?? error);
  } finally {
    await client.close().catch(() => {});
  }
  return record;
}

const total = Number(args.sessions);
const results = [];
let next = 0;
async function worker() {
  while (next < total) {
    next += 1;
    results.push(await session(args.url, args.transport, args.steps));
  }
}
await Promise.all(Array.from({ length: Math.min(Number(args.concurrency), total) }, worker));
process.stdout.write(JSON.stringify({ sessions: results }) + "\n");
process.exit(0);
