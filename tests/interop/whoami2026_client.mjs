// A TypeScript SDK 2026-07-28 client (@modelcontextprotocol/client 2.4) that only calls
// whoami, for tests/test_mixed_era.py. Plain ESM.
//
//   node whoami2026_client.mjs --url URL [--calls N]
//
// Pinned to 2026-07-28. It lists no tools: the mixed fleet's servers declare whoami in
// different shapes (with an output schema or without), and the client checks a result
// against the listing it saw. Prints one JSON line: {"served": [...]}
import { parseArgs } from "node:util";

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const { values: args } = parseArgs({
  options: { url: { type: "string" }, calls: { type: "string", default: "6" } },
});

const client = new Client({ name: "mcplb-whoami2026", version: "1.0.0" }, {
  versionNegotiation: { mode: { pin: "2026-07-28" } },
});
await client.connect(new StreamableHTTPClientTransport(new URL(args.url)));
const served = [];
for (let i = 0; i < Number(args.calls); i++) {
  const result = await client.callTool({ name: "whoami", arguments: {} });
  served.push(result.content[0].text);
}
console.log(JSON.stringify({ served }));
await client.close();
