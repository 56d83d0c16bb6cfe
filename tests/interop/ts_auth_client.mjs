// A TypeScript SDK (1.32) MCP client sending a bearer token, for mcplb's edge-auth tests.
//
//   node ts_auth_client.mjs --url URL [--token TOKEN]
//
// Initializes a Streamable HTTP session, lists the tools, calls whoami and add, closes the
// session, and prints one JSON line: {"ok": bool, "name": "...", "tools": [...],
// "error": "..."}. Without --token it sends none (mcplb must refuse it).
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const { values: args } = parseArgs({
  options: { url: { type: "string" }, token: { type: "string" } },
});
const TIMEOUT_MS = 15000;
const textOf = (result) => result.content.map((block) => block.text ?? "").join("");

const headers = args.token ? { authorization: `Bearer ${args.token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(args.url), {
  requestInit: { headers },
});
const client = new Client({ name: "mcplb-auth-ts", version: "1.0.0" });
const record = { ok: false };
try {
  await client.connect(transport, { timeout: TIMEOUT_MS });
  const tools = await client.listTools(undefined, { timeout: TIMEOUT_MS });
  record.tools = tools.tools.map((tool) => tool.name).sort();
  record.name = textOf(await client.callTool({ name: "whoami", arguments: {} }));
  record.sum = textOf(await client.callTool({ name: "add", arguments: { a: 2, b: 3 } }));
  await transport.terminateSession();
  record.ok = true;
} catch (error) {
  record.error = String(error?.message ?? error);
} finally {
  await client.close().catch(() => {});
}
console.log(JSON.stringify(record));
