// A TypeScript SDK 2026-07-28 MCP server (@modelcontextprotocol/server 2.4) for mcplb's
// interop tests, plain ESM (no build step).
//
//   node ts2026_server.mjs --name NAME --port PORT [--legacy reject|stateless]
//
// Serves /mcp on 127.0.0.1:PORT with the SDK's createMcpHandler (one McpServer per
// request, sessionless) mounted on node:http by @modelcontextprotocol/node. --legacy
// reject (the default): modern-only, as a 2026-only deployment (initialize is refused with
// 400); stateless: the SDK's dual-era endpoint (2025 clients served statelessly).
// Tools: whoami (the server's name), add(a, b), silent(delay) (answers after `delay`
// seconds with nothing sent before: a long call).
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { toNodeHandler } from "@modelcontextprotocol/node";
import { createMcpHandler, McpServer } from "@modelcontextprotocol/server";
import { z } from "zod";

const { values: args } = parseArgs({
  options: {
    name: { type: "string" },
    port: { type: "string" },
    legacy: { type: "string", default: "reject" },
  },
});
const NAME = args.name;

function factory() {
  const server = new McpServer({ name: NAME, version: "1.0.0" });
  server.registerTool("whoami", { description: "The backend's name." }, async () => ({
    content: [{ type: "text", text: NAME }],
  }));
  server.registerTool(
    "add",
    { description: "Add two integers.", inputSchema: { a: z.number(), b: z.number() } },
    async ({ a, b }) => ({ content: [{ type: "text", text: String(a + b) }] }),
  );
  server.registerTool(
    "silent",
    { description: "Answer after delay seconds.", inputSchema: { delay: z.number() } },
    async ({ delay }) => {
      await new Promise((resolve) => setTimeout(resolve, delay * 1000));
      return { content: [{ type: "text", text: `silent ${delay}` }] };
    },
  );
  return server;
}

const handler = toNodeHandler(createMcpHandler(factory, { legacy: args.legacy }));
const http = createServer((req, res) => {
  if (new URL(req.url, "http://x").pathname !== "/mcp") {
    res.writeHead(404).end();
    return;
  }
  handler(req, res);
});
http.listen(Number(args.port), "127.0.0.1", () => {
  console.error(`ts2026 server ${NAME} on 127.0.0.1:${args.port} (legacy: ${args.legacy})`);
});
