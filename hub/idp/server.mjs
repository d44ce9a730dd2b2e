#!/usr/bin/env node
// INCISIVE Lab development/test identity provider (NOT for production).
//
// A real OpenID Provider (npm `oidc-provider` by panva, pinned in package.json) that issues
// RFC 9068 JWT access tokens for the nodes: `typ: at+jwt`, `aud` = a node's audience,
// RS256 with a key generated at start (or read from a JWKS file), and `acr` (eIDAS LoA),
// `roles`, `groups`, `preferred_username` added from the configured account.
//
// Usage (see README.md):
//   node server.mjs --config idp.json [--port 0] [--host 127.0.0.1] [--jwks keys.json] [--dev-login]
//   node server.mjs --generate-jwks keys.json
// Environment fallbacks: INCISIVE_IDP_CONFIG, INCISIVE_IDP_PORT, INCISIVE_IDP_HOST,
// INCISIVE_IDP_JWKS, INCISIVE_IDP_DEV_LOGIN=1.
//
// When listening, one JSON line is printed on stdout:
//   {"event":"ready","issuer":"http://127.0.0.1:PORT","port":PORT,"kids":[...]}

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const LOA_URIS = {
  low: 'http://eidas.europa.eu/LoA/low',
  substantial: 'http://eidas.europa.eu/LoA/substantial',
  high: 'http://eidas.europa.eu/LoA/high',
};
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
const USER_KEYS = new Set(['username', 'sub', 'name', 'email', 'roles', 'groups', 'loa', 'password', 'organisation']);
const CLIENT_KEYS = new Set(['client_id', 'client_secret', 'redirect_uris', 'scope']);
// A confidential client's refresh tokens live a working day (the hub refreshes the user's
// access token with them); the grant behind them must live as long.
const REFRESH_TOKEN_TTL = 8 * 3600;
const RESOURCE_KEYS = new Set(['audience', 'scopes', 'access_token_ttl']);
const CONFIG_KEYS = new Set(['resources', 'default_audience', 'clients', 'users']);

class ConfigError extends Error {}

function fail(message) {
  throw new ConfigError(message);
}

function checkKeys(obj, allowed, where) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) fail(`${where} must be an object`);
  for (const key of Object.keys(obj)) {
    if (!allowed.has(key)) fail(`${where}: unknown key ${JSON.stringify(key)} (allowed: ${[...allowed].join(', ')})`);
  }
}

function stringList(value, where) {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || !v)) {
    fail(`${where} must be a list of non-empty strings`);
  }
  return value;
}

function loaUri(value, where) {
  if (typeof value !== 'string') fail(`${where}: loa is required (low, substantial, high or the eIDAS URI)`);
  if (LOA_URIS[value]) return LOA_URIS[value];
  if (Object.values(LOA_URIS).includes(value)) return value;
  fail(`${where}: unknown loa ${JSON.stringify(value)} (low, substantial, high or the eIDAS URI)`);
}

// Reads and validates the JSON configuration (accounts, clients, resource servers).
function loadConfig(path) {
  let raw;
  try {
    raw = JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read config ${path}: ${err.message}`);
  }
  checkKeys(raw, CONFIG_KEYS, 'config');

  if (!Array.isArray(raw.resources) || raw.resources.length === 0) fail('config.resources must list at least one resource server');
  const resources = new Map();
  raw.resources.forEach((r, i) => {
    const where = `config.resources[${i}]`;
    checkKeys(r, RESOURCE_KEYS, where);
    if (typeof r.audience !== 'string' || !URL.parse(r.audience) || r.audience.includes('#')) {
      fail(`${where}.audience must be an absolute URI without fragment`);
    }
    const ttl = r.access_token_ttl ?? 600;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > 86400) fail(`${where}.access_token_ttl must be 1..86400 seconds`);
    if (resources.has(r.audience)) fail(`${where}.audience ${r.audience} is listed twice`);
    resources.set(r.audience, { scopes: stringList(r.scopes, `${where}.scopes`), ttl });
  });
  const defaultAudience = raw.default_audience ?? raw.resources[0].audience;
  if (!resources.has(defaultAudience)) fail(`config.default_audience ${defaultAudience} is not one of config.resources`);

  if (!Array.isArray(raw.clients) || raw.clients.length === 0) fail('config.clients must list at least one client');
  const clients = raw.clients.map((c, i) => {
    const where = `config.clients[${i}]`;
    checkKeys(c, CLIENT_KEYS, where);
    if (typeof c.client_id !== 'string' || !c.client_id) fail(`${where}.client_id is required`);
    const redirectUris = stringList(c.redirect_uris, `${where}.redirect_uris`);
    if (redirectUris.length === 0) fail(`${where}.redirect_uris must not be empty`);
    const meta = {
      client_id: c.client_id,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      // Every level is acceptable: the ID token then always carries `acr` (the hub checks it).
      default_acr_values: Object.values(LOA_URIS),
    };
    if (c.scope !== undefined) meta.scope = c.scope;
    if (c.client_secret === undefined) {
      meta.token_endpoint_auth_method = 'none'; // public client: PKCE is required
    } else {
      if (typeof c.client_secret !== 'string' || c.client_secret.length < 16) fail(`${where}.client_secret must be at least 16 characters`);
      meta.client_secret = c.client_secret;
      meta.token_endpoint_auth_method = 'client_secret_basic';
      // A confidential client (the hub) keeps the user's session going with refresh tokens.
      meta.grant_types = ['authorization_code', 'refresh_token'];
    }
    return meta;
  });

  if (!Array.isArray(raw.users) || raw.users.length === 0) fail('config.users must list at least one user');
  const users = new Map();
  const bySub = new Map();
  raw.users.forEach((u, i) => {
    const where = `config.users[${i}]`;
    checkKeys(u, USER_KEYS, where);
    if (typeof u.username !== 'string' || !u.username) fail(`${where}.username is required`);
    if (users.has(u.username)) fail(`${where}.username ${u.username} is listed twice`);
    const account = {
      username: u.username,
      sub: u.sub ?? u.username,
      name: u.name,
      email: u.email,
      roles: stringList(u.roles, `${where}.roles`),
      groups: stringList(u.groups, `${where}.groups`),
      acr: loaUri(u.loa, where),
      password: u.password,
      organisation: u.organisation,
    };
    if (account.organisation !== undefined && (typeof account.organisation !== 'string' || !account.organisation)) {
      fail(`${where}.organisation must be a non-empty string (the schac_home_organization claim)`);
    }
    if (bySub.has(account.sub)) fail(`${where}.sub ${account.sub} is listed twice`);
    users.set(account.username, account);
    bySub.set(account.sub, account);
  });
  return { resources, defaultAudience, clients, users, bySub };
}

// RFC 7638 thumbprint of an RSA key: the kid.
function thumbprint(jwk) {
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return crypto.createHash('sha256').update(canonical).digest('base64url');
}

function generateSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), alg: 'RS256', use: 'sig' };
}

function loadJwks(path) {
  let jwks;
  try {
    jwks = JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read JWKS ${path}: ${err.message}`);
  }
  if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) fail(`JWKS ${path} holds no keys`);
  for (const key of jwks.keys) {
    if (key.kty !== 'RSA' || !key.d) fail(`JWKS ${path}: every key must be a private RSA JWK`);
    delete key.key_ops; // would be published with the public key ("sign" only)
    key.kid ??= thumbprint(key);
    key.alg ??= 'RS256';
    key.use ??= 'sig';
  }
  return jwks;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

async function readForm(req, limit = 8192) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim();
  if (type !== 'application/x-www-form-urlencoded') throw new errors.InvalidRequest('expected a form body');
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > limit) throw new errors.InvalidRequest('form body too large');
  }
  return new URLSearchParams(body);
}

function parseCli() {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      jwks: { type: 'string' },
      'dev-login': { type: 'boolean' },
      'generate-jwks': { type: 'string' },
    },
  });
  const env = process.env;
  return {
    config: values.config ?? env.INCISIVE_IDP_CONFIG,
    port: Number(values.port ?? env.INCISIVE_IDP_PORT ?? 0),
    host: values.host ?? env.INCISIVE_IDP_HOST ?? '127.0.0.1',
    jwks: values.jwks ?? env.INCISIVE_IDP_JWKS,
    devLogin: values['dev-login'] ?? env.INCISIVE_IDP_DEV_LOGIN === '1',
    generateJwks: values['generate-jwks'],
  };
}

function providerConfiguration(cfg, jwks) {
  const { resources, defaultAudience, clients, bySub } = cfg;
  return {
    clients,
    jwks,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    acrValues: Object.values(LOA_URIS),
    claims: {
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
      groups: ['groups', 'roles'],
    },
    scopes: ['openid', 'profile', 'email', 'groups'],
    // The ID token carries the claims of the granted scopes (name, groups...): with resource
    // indicators the access token is for the nodes, not for the userinfo endpoint, so a hub
    // reads who the user is from the ID token.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    // Refresh tokens for every client allowed the refresh_token grant (the confidential
    // ones), without asking for offline_access, bound to the grant, not to the browser session.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async (ctx, token) => !ctx.oidc.client?.grantTypeAllowed('refresh_token'),
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // No `resource` in the authorization request: the configured node audience.
        defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf : defaultAudience),
        // No `resource` at the token endpoint: the one granted at authorization.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          const rs = resources.get(indicator);
          if (!rs) throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
          return {
            audience: indicator,
            scope: rs.scopes.join(' '),
            accessTokenFormat: 'jwt',
            accessTokenTTL: rs.ttl,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    // Configured clients are first-party: grant what they ask for (no consent screen).
    loadExistingGrant: async (ctx) => {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
      if (!grant) {
        grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
      }
      grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
      for (const [indicator, rs] of Object.entries(oidc.resourceServers || {})) {
        const wanted = [...oidc.requestParamScopes].filter((s) => rs.scopes.has(s));
        if (wanted.length) grant.addResourceScope(indicator, wanted.join(' '));
        else grant.addResourceScope(indicator, '');
      }
      await grant.save();
      return grant;
    },
    findAccount: async (ctx, sub) => {
      const account = bySub.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        claims: async () => ({
          sub,
          name: account.name,
          preferred_username: account.username,
          email: account.email,
          groups: account.groups,
          roles: account.roles,
        }),
      };
    },
    // RFC 9068 access tokens carry the eIDAS level and the roles/groups of the account.
    extraTokenClaims: async (ctx, token) => {
      const account = token.accountId ? bySub.get(token.accountId) : undefined;
      if (!account) return undefined;
      return {
        acr: account.acr,
        roles: account.roles,
        groups: account.groups,
        preferred_username: account.username,
        // eduGAIN / REFEDS: the person's home organisation, which sharing terms name
        ...(account.organisation ? { schac_home_organization: account.organisation } : {}),
      };
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
      Session: 3600,
      Interaction: 600,
      Grant: REFRESH_TOKEN_TTL,
      RefreshToken: REFRESH_TOKEN_TTL,
      AuthorizationCode: 60,
      IdToken: 600,
    },
  };
}

function loginPage(uid, details, cfg, devLogin, error) {
  const users = [...cfg.users.values()];
  const options = devLogin
    ? `<p>Development login: pick a configured user (no password).</p>
       <select name="login">${users.map((u) => `<option>${escapeHtml(u.username)}</option>`).join('')}</select>`
    : `<label>User <input name="login" autocomplete="username"></label>
       <label>Password <input name="password" type="password" autocomplete="current-password"></label>`;
  return `<!doctype html><html><head><meta charset="utf-8"><title>INCISIVE Lab dev IdP</title></head>
<body><h1>INCISIVE Lab development identity provider</h1>
<p>Client: ${escapeHtml(details.params.client_id)}</p>
${error ? `<p role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">${options}
<button type="submit">Sign in</button></form>
<p><a href="/interaction/${escapeHtml(uid)}/abort">Cancel</a></p></body></html>`;
}

// `formTargets`: origins the login form's POST may end up at through redirects (the
// client's redirect URI): browsers apply form-action to every redirect after the POST.
function sendHtml(res, status, html, formTargets = []) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  const targets = ["'self'", ...formTargets].join(' ');
  res.setHeader('Content-Security-Policy', `default-src 'none'; form-action ${targets}`);
  res.end(html);
}

// The origin of the authorization request's redirect URI (already checked by the provider
// against the client's registered ones), for the login page's form-action.
function redirectOrigins(details) {
  const uri = details?.params?.redirect_uri;
  const parsed = typeof uri === 'string' ? URL.parse(uri) : null;
  return parsed && (parsed.protocol === 'http:' || parsed.protocol === 'https:') ? [parsed.origin] : [];
}

// The interaction routes: a minimal login (by name in --dev-login mode, else by password).
async function interaction(provider, cfg, devLogin, req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login|\/abort)?$/);
  if (!match) return sendHtml(res, 404, 'not found');
  const [, uid, action] = match;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return sendHtml(res, 400, 'interaction mismatch');

  if (action === '/abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'the user cancelled the login',
    }, { mergeWithLastSubmission: false });
  }
  if (details.prompt.name !== 'login') {
    // Consent is given by loadExistingGrant for the configured (first-party) clients.
    return sendHtml(res, 400, `unexpected prompt ${escapeHtml(details.prompt.name)}`);
  }
  if (action !== '/login') {
    if (req.method !== 'GET') return sendHtml(res, 405, 'method not allowed');
    return sendHtml(res, 200, loginPage(uid, details, cfg, devLogin), redirectOrigins(details));
  }
  if (req.method !== 'POST') return sendHtml(res, 405, 'method not allowed');
  const form = await readForm(req);
  const account = cfg.users.get(form.get('login') || '');
  let ok = Boolean(account);
  if (ok && !devLogin) {
    const given = Buffer.from(form.get('password') || '');
    const want = Buffer.from(account.password || '');
    ok = Boolean(account.password) && given.length === want.length && crypto.timingSafeEqual(given, want);
  }
  if (!ok) {
    return sendHtml(res, 401, loginPage(uid, details, cfg, devLogin, 'unknown user or wrong password'),
      redirectOrigins(details));
  }
  return provider.interactionFinished(req, res, {
    login: { accountId: account.sub, acr: account.acr, amr: [devLogin ? 'dev' : 'pwd'], remember: false },
  }, { mergeWithLastSubmission: false });
}

async function main() {
  const args = parseCli();
  if (args.generateJwks) {
    fs.writeFileSync(args.generateJwks, `${JSON.stringify({ keys: [generateSigningKey()] }, null, 2)}\n`, { mode: 0o600 });
    return;
  }
  if (!args.config) fail('--config FILE (or INCISIVE_IDP_CONFIG) is required');
  if (!LOOPBACK.has(args.host)) fail(`--host ${args.host}: this development IdP listens on loopback only (127.0.0.1, ::1, localhost)`);
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) fail(`--port ${args.port} is not a port number`);
  const cfg = loadConfig(args.config);
  const jwks = args.jwks ? loadJwks(args.jwks) : { keys: [generateSigningKey()] };

  let handler = (req, res) => { res.statusCode = 503; res.end(); };
  const server = http.createServer((req, res) => handler(req, res));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(args.port, args.host, resolve);
  });
  const { port } = server.address();
  const hostPart = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `http://${hostPart}:${port}`;

  const provider = new Provider(issuer, providerConfiguration(cfg, jwks));
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  const callback = provider.callback();
  handler = (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith('/interaction/')) {
      interaction(provider, cfg, args.devLogin, req, res, url).catch((err) => {
        console.error('interaction error', err.message);
        if (!res.headersSent) sendHtml(res, err.statusCode || 400, escapeHtml(err.message));
      });
      return;
    }
    callback(req, res);
  };

  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  console.log(JSON.stringify({
    event: 'ready', issuer, port, dev_login: args.devLogin, kids: jwks.keys.map((k) => k.kid),
  }));
}

main().catch((err) => {
  console.error(err instanceof ConfigError ? `incisive-idp: ${err.message}` : err);
  process.exit(2);
});
