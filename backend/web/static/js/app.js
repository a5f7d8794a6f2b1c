// app.js: sign-in, navigation and the shared live event stream.

import { setToken, clearToken, signedIn, signInSession, resumeSession, signOut, whoami, setUnauthorizedHandler, get, EventStream, ApiError } from "./api.js";
import { h, clear } from "./dom.js";
import { fleetPage } from "./fleet.js";
import { devicePage } from "./device.js";
import { firmwarePage } from "./firmware.js";
import { rolloutPage, rolloutsPage } from "./rollout.js";
import { jobsPage, jobPage, newJobPage } from "./jobs.js";

const main = document.getElementById("main");
const live = document.getElementById("live");
const signout = document.getElementById("signout");
const who = document.getElementById("whoami");

export const stream = new EventStream((status) => {
  live.textContent = status;
  live.className = "live " + status;
});

let teardown = null;

export function toast(msg, kind) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.className = "toast show " + (kind || "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = "toast"; }, 4000);
}

function signIn(message) {
  stream.stop();
  if (teardown) { teardown(); teardown = null; }
  signout.hidden = true;
  who.hidden = true;
  who.textContent = "";
  live.textContent = "signed out";
  live.className = "live";
  // Two ways in: an operator's name and password (a session cookie), or
  // an API token (the bootstrap admin token or one from ecowatt login).
  const name = h("input", { id: "op-name", name: "username", type: "text", autocomplete: "username", "aria-describedby": "op-help" });
  const password = h("input", { id: "op-password", name: "password", type: "password", autocomplete: "current-password", "aria-describedby": "token-error" });
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off",
    "aria-describedby": "token-help" + (message ? " token-error" : "") });
  const err = h("p", { id: "token-error", class: "error", role: "alert" }, message || "");
  // refuse shows why a sign-in failed (said401 for a 401) and keeps no
  // credentials.
  const refuse = (ex, said401, field) => {
    clearToken();
    err.textContent = ex instanceof ApiError && ex.status === 401 ? said401 : ex.message;
    field.setAttribute("aria-invalid", "true");
    field.focus();
  };
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title", onsubmit: async (e) => {
    e.preventDefault();
    if (name.value.trim() || password.value) {
      try {
        await signInSession(name.value.trim(), password.value);
      } catch (ex) {
        refuse(ex, "Wrong operator name or password: not accepted.", password);
        return;
      }
      start();
      return;
    }
    if (!input.value.trim()) { err.textContent = "Give a name and password, or a token."; name.focus(); return; }
    setToken(input.value.trim());
    try {
      await get("/api/v1/devices", { signingIn: true });
    } catch (ex) {
      refuse(ex, "That token was not accepted.", input);
      return;
    }
    start();
  } },
  h("h1", { id: "signin-title" }, "Sign in"),
  h("label", { for: "op-name" }, "Operator name"), name,
  h("label", { for: "op-password" }, "Password"), password,
  h("p", { id: "op-help", class: "muted" }, "An operator account (ecowatt operator add). The session lasts 12 hours, or until you sign out."),
  h("label", { for: "token" }, "Or an API token"), input,
  h("p", { id: "token-help", class: "muted" }, "The token given to ecowatt serve (--admin-token or ECOWATT_ADMIN_TOKEN), or an operator's API token. It is kept in this tab only."),
  err,
  h("button", { type: "submit", class: "primary", id: "signin" }, "Sign in"));
  clear(main).append(form);
  name.focus();
}

function start() {
  signout.hidden = false;
  stream.start();
  route();
}

async function route() {
  if (!signedIn()) { signIn(); return; }
  if (teardown) { teardown(); teardown = null; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let page, nav;
  switch (parts[0]) {
    case "": case "fleet": page = fleetPage; nav = "fleet"; break;
    case "device": page = (root, ctx) => devicePage(root, ctx, parts[1]); nav = "fleet"; break;
    case "firmware": page = firmwarePage; nav = "firmware"; break;
    case "rollouts":
      page = parts[1] ? (root, ctx) => rolloutPage(root, ctx, parts[1]) : rolloutsPage;
      nav = "rollouts"; break;
    case "jobs":
      if (parts[1] === "new") page = (root, ctx) => newJobPage(root, ctx, parts[2] || "");
      else page = parts[1] ? (root, ctx) => jobPage(root, ctx, parts[1]) : jobsPage;
      nav = "jobs"; break;
    default:
      clear(main).append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the fleet")));
      return;
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const root = clear(main);
  const cleanups = [];
  // role: what the caller may do, so that pages show only the controls
  // it can use (the server checks every request anyway).
  const me = await whoami();
  who.textContent = me.operator ? `${me.operator} (${me.role})` : "";
  who.hidden = !me.operator;
  const ctx = { stream, toast, role: me.role || null, onCleanup: (fn) => cleanups.push(fn) };
  teardown = () => cleanups.forEach((fn) => fn());
  try {
    await page(root, ctx);
  } catch (e) {
    root.append(h("p", { class: "error", role: "alert" }, e.message));
  }
}

setUnauthorizedHandler(() => { clearToken(); signIn("The server no longer accepts this session or token. Sign in again."); });
signout.addEventListener("click", async () => { stream.stop(); await signOut(); signIn(); });
window.addEventListener("hashchange", () => { if (signedIn()) route(); });
// A session cookie outlives the tab's storage (a reload, another tab).
resumeSession().then((ok) => { if (ok) start(); else signIn(); });
