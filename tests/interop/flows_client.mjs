// A TypeScript SDK 2026-07-28 client (@modelcontextprotocol/client 2.4) running the flows
// of tests/test_mcp2026_interop_flows.py against flows_server.{py,mjs}. Plain ESM.
//
//   node flows_client.mjs --url URL [--quiet SECONDS] [--asks N]
//
// Pinned to 2026-07-28 (no initialize, no session). Prints one JSON line:
//   progress: {values: [...], before_result: bool, text}   countdown(5) with onprogress
//   listen: {acked, quiet, notified, changed_by}   a listen stream for toolsListChanged,
//     held quiet SECONDS, then change_tools called on another request: the stream must
//     carry notifications/tools/list_changed
//   mrtr: [text, ...]   ask(word) N times, the client answering each elicitation "yes"
import { parseArgs } from "node:util";

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    quiet: { type: "string", default: "0" },
    asks: { type: "string", default: "3" },
  },
});

function within(ms, promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

const client = new Client(
  { name: "mcplb-flows-ts", version: "1.0.0" },
  {
    capabilities: { elicitation: { form: {} } },
    versionNegotiation: { mode: { pin: "2026-07-28" } },
  },
);
client.setRequestHandler("elicitation/create", async () => ({
  action: "accept",
  content: { answer: "yes" },
}));
await client.connect(new StreamableHTTPClientTransport(new URL(args.url)));
const out = {};

// progress
const values = [];
let resolved = false;
let late = false;
const result = await client.callTool(
  { name: "countdown", arguments: { n: 5 } },
  {
    onprogress: (update) => {
      if (resolved) late = true;
      values.push(update.progress);
    },
  },
);
resolved = true;
out.progress = { values, before_result: !late, text: result.content[0].text };

// subscriptions/listen
let notified;
const changed = new Promise((resolve) => {
  notified = resolve;
});
client.setNotificationHandler("notifications/tools/list_changed", async () => notified(true));
const subscription = await within(10000, client.listen({ toolsListChanged: true }), "listen ack");
const acked = subscription.honoredFilter?.toolsListChanged === true;
await new Promise((resolve) => setTimeout(resolve, Number(args.quiet) * 1000));
const change = await client.callTool({ name: "change_tools", arguments: {} });
const got = await within(10000, changed, "tools/list_changed").catch(() => false);
await subscription.close();
out.listen = {
  acked,
  quiet: Number(args.quiet),
  notified: got,
  changed_by: change.content[0].text,
  closed: await subscription.closed,
};

// MRTR
out.mrtr = [];
for (let i = 0; i < Number(args.asks); i++) {
  const answer = await client.callTool({ name: "ask", arguments: { word: `w${i}` } });
  out.mrtr.push(answer.content[0].text);
}
console.log(JSON.stringify(out));
await client.close();
