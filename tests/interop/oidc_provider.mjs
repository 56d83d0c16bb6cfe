// A real OpenID provider (the npm package oidc-provider) for mcplb's edge-auth tests, on
// 127.0.0.1 only. It issues JWT access tokens by the client-credentials grant with an
// RFC 8707 resource indicator (audience = the resource asked for).
//
//   node oidc_provider.mjs --port P --keys FILE [--ttl SECONDS]
//
// FILE: a JWKS of private signing keys (the tests write it, and restart the provider with
// another to rotate keys). Clients: "mcp-client" / "mcp-secret" (scope "mcp:tools") and
// "reader" / "reader-secret" (scope "mcp:read" only). GET /test/jwks-count answers how
// many times the JWKS was fetched (the kid-flood test reads it).
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import Provider from "oidc-provider";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    keys: { type: "string" },
    ttl: { type: "string", default: "300" },
  },
});
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(args.keys, "utf8"));
const ttl = Number(args.ttl);

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "mcp-client",
      client_secret: "mcp-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      scope: "mcp:tools",
    },
    {
      client_id: "reader",
      client_secret: "reader-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      scope: "mcp:read",
    },
  ],
  jwks,
  scopes: ["mcp:tools", "mcp:read"],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      // Any absolute resource: the audience of the JWT access token issued for it.
      getResourceServerInfo: (ctx, resourceIndicator, client) => ({
        scope: client.scope,
        audience: resourceIndicator,
        accessTokenTTL: ttl,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
});

let jwksCount = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === "/jwks") jwksCount += 1;
  if (ctx.path === "/test/jwks-count") {
    ctx.body = { count: jwksCount };
    return;
  }
  await next();
});

provider.listen(port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
