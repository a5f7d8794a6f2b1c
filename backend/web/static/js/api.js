// api.js: the credentials (an API token, or a name and password session
// cookie), JSON calls to /api/v1, the caller's role and the live event stream.

const TOKEN_KEY = "ecowatt.token";
const SESSION_KEY = "ecowatt.session"; // the operator's name while a session cookie is in use
// CSRF_HEADER: a change made with the session cookie must carry it (a
// cross-site form cannot set a header); see backend/httpapi/auth.go.
const CSRF_HEADER = "X-Ecowatt-Csrf";

export function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
export function setToken(t) { me = null; sessionStorage.removeItem(SESSION_KEY); sessionStorage.setItem(TOKEN_KEY, t); }
export function clearToken() { me = null; sessionStorage.removeItem(TOKEN_KEY); sessionStorage.removeItem(SESSION_KEY); }
// signedIn reports that there are credentials to try: a token or a session.
export function signedIn() { return !!(token() || sessionStorage.getItem(SESSION_KEY)); }

// authHeaders are the headers that carry the credentials: the bearer token,
// or (the cookie going by itself) the CSRF header.
function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : { [CSRF_HEADER]: "1" };
}

// signInSession opens a session with a name and password: the server sets
// an HttpOnly cookie the page never sees.
export async function signInSession(name, password) {
  clearToken();
  const w = await call("POST", "/api/v1/session", { name, password }, { signingIn: true });
  sessionStorage.setItem(SESSION_KEY, w.operator || name);
  me = w.role ? w : null;
  return w;
}

// resumeSession adopts a session cookie this tab did not open (another
// tab signed in, or the tab was reloaded after its storage went): true
// when the server still knows it.
export async function resumeSession() {
  if (signedIn()) return true;
  try {
    const w = await call("GET", "/api/v1/whoami", undefined, { signingIn: true });
    sessionStorage.setItem(SESSION_KEY, w.operator);
    me = w;
    return true;
  } catch {
    return false;
  }
}

// signOut closes the session (the server revokes its token) and forgets
// the credentials.
export async function signOut() {
  if (!token() && sessionStorage.getItem(SESSION_KEY)) {
    try { await call("DELETE", "/api/v1/session", undefined, { signingIn: true }); } catch { /* the cookie expires anyway */ }
  }
  clearToken();
}

// whoami is the caller as the server sees it ({operator, role}), asked
// once per sign-in; {operator: "", role: null} when the server cannot say
// now (not kept: the next page asks again).
let me = null;
export async function whoami() {
  if (me) return me;
  try {
    me = await get("/api/v1/whoami");
    return me;
  } catch {
    return { operator: "", role: null };
  }
}
// role is the caller's role: viewer, operator, admin, or null (unknown).
export async function role() { return (await whoami()).role || null; }
const RANK = { viewer: 1, operator: 2, admin: 3 };
// may reports whether role r reaches want. An unknown role (null) may
// nothing: a control shown to someone who cannot use it is worse than one
// missing until the next page load.
export const may = (r, want) => (RANK[r] || 0) >= RANK[want];

// ApiError carries the API's error code, message and offending field.
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || "";
  }
  // missing reports that this server has no such route (yet).
  get missing() {
    return this.status === 405 || this.status === 501 ||
      (this.status === 404 && /^no route/.test(this.message));
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

// call sends a JSON request (or a Blob/FormData body as is) and returns
// the decoded answer; failures throw ApiError.
export async function call(method, path, body, opts = {}) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  let payload;
  if (body instanceof Blob || body instanceof FormData || body instanceof ArrayBuffer) {
    payload = body;
    if (opts.contentType) headers["Content-Type"] = opts.contentType;
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload, signal: opts.signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", "cannot reach the server");
  }
  const text = await resp.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
  if (!resp.ok) {
    const err = (doc && doc.error) || {};
    const e = new ApiError(resp.status, err.code || "http_" + resp.status,
      err.message || text.trim() || resp.statusText, err.field);
    if (resp.status === 401 && !opts.signingIn) onUnauthorized(e);
    throw e;
  }
  return doc;
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const enc = encodeURIComponent;

// EventStream keeps one connection to /api/v1/events (fetch streaming, so
// the token goes in a header, not the URL) and hands every event to the
// listeners. It reconnects with backoff until stopped.
export class EventStream {
  constructor(onStatus) {
    this.listeners = new Set();
    this.onStatus = onStatus || (() => {});
    this.ctrl = null;
    this.stopped = true;
  }
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop();
  }
  stop() {
    this.stopped = true;
    if (this.ctrl) this.ctrl.abort();
  }
  async loop() {
    let delay = 500;
    while (!this.stopped) {
      this.ctrl = new AbortController();
      try {
        const resp = await fetch("/api/v1/events", {
          headers: { ...authHeaders(), Accept: "text/event-stream" },
          signal: this.ctrl.signal,
        });
        if (resp.status === 401) { this.onStatus("unauthorized"); onUnauthorized(); return; }
        if (!resp.ok) throw new Error("event stream: HTTP " + resp.status);
        this.onStatus("live");
        delay = 500;
        await this.read(resp.body.getReader());
      } catch (e) {
        if (this.stopped) return;
      }
      this.onStatus("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  async read(reader) {
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        let ev;
        try { ev = JSON.parse(data); } catch { continue; }
        for (const fn of this.listeners) {
          try { fn(ev); } catch (e) { console.error(e); }
        }
      }
    }
  }
}
