// A TypeScript SDK 2026-07-28 MCP client (@modelcontextprotocol/client 2.4) for mcplb's
// interop tests, plain ESM.
//
//   node ts2026_client.mjs --url URL [--calls N]
//
// Connects in the 2026-07-28 era (mode pinned: server/discover, no initialize, no session),
// lists the tools, calls whoami N times and add(2, 3), and prints one JSON line:
//   {"era": ..., "tools": [...], "served": [...], "sum": "5"}
import { parseArgs } from "node:util";

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const { values: args } = parseArgs({
  options: { url: { type: "string" }, calls: { type: "string", default: "3" } },
});

const client = new Client({ name: "mcplb-ts2026", version: "1.0.0" }, {
  versionNegotiation: { mode: { pin: "2026-07-28" } },
});
await client.connect(new StreamableHTTPClientTransport(new URL(args.url)));
const tools = (await client.listTools()).tools.map((t) => t.name).sort();
const served = [];
for (let i = 0; i < Number(args.calls); i++) {
  const result = await client.callTool({ name: "whoami", arguments: {} });
  served.push(result.content[0].text);
}
const sum = (await client.callTool({ name: "add", arguments: { a: 2, b: 3 } })).content[0].text;
console.log(JSON.stringify({ tools, served, sum }));
await client.close();
