// Shared helpers for the voxgate web UI: DOM building, the HTTP API client, the API key, toasts.

const KEY_STORAGE = "voxgate.apiKey";

/** The API key the user entered (kept in localStorage), or "" when the server has none. */
export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: the key lasts for this page only */
  }
}

/**
 * Call the gateway's HTTP API. Never throws: resolves to {ok, status, data, error}.
 * `error` is a readable string for failures (network error, HTTP error with its `detail`).
 */
export async function api(path, { method = "GET", body, signal, retried = false } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") return { ok: false, status: 0, data: null, error: "cancelled", aborted: true };
    return { ok: false, status: 0, data: null, error: `cannot reach the server (${err && err.message ? err.message : err})` };
  }
  let data = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (response.ok) return { ok: true, status: response.status, data, error: null };
  if (response.status === 401 && !retried && askForKey(describeError(response.status, data))) {
    return api(path, { method, body, signal, retried: true });
  }
  return { ok: false, status: response.status, data, error: describeError(response.status, data) };
}

/**
 * Auth is on and the key is missing, wrong or revoked: ask for one (once per refusal), keep it like the key box
 * does. True when the user gave a key to retry with.
 */
function askForKey(why) {
  if (typeof window === "undefined" || typeof window.prompt !== "function") return false;
  const entered = window.prompt(`This server needs an API key (${why}). Paste one (Authorization: Bearer):`, "");
  if (!entered || !entered.trim()) return false;
  setApiKey(entered.trim());
  const box = document.getElementById("api-key");
  if (box) box.value = entered.trim();
  return true;
}

/**
 * A one-use session token for a WebSocket URL (with auth off the server issues one to anyone).
 * Browsers cannot put headers on a WebSocket, and a URL ends up in logs and history: the key never goes in
 * one, a token that works once and expires within a minute does (POST /v1/sessions/token, docs/protocol.md).
 * Throws with a readable message when the server refuses.
 */
export async function sessionToken() {
  const result = await api("/v1/sessions/token", { method: "POST" }); // asks for a key if auth is on
  if (!result.ok) throw new Error(`cannot get a session token: ${result.error}`);
  return result.data.token;
}

/** A one-line description of an HTTP error answer. */
export function describeError(status, data) {
  let detail = "";
  if (data && typeof data === "object" && "detail" in data) {
    const d = data.detail;
    if (typeof d === "string") detail = d;
    else if (Array.isArray(d)) detail = d.map((item) => (item && (item.message || item.msg)) || JSON.stringify(item)).join("; ");
    else detail = JSON.stringify(d);
  } else if (typeof data === "string") {
    detail = data.slice(0, 200);
  }
  const hint = status === 401 || status === 403 ? " (set the API key at the top right)" : "";
  return `HTTP ${status}${detail ? `: ${detail}` : ""}${hint}`;
}

/** Create an element: el("div", {class: "x", onclick: fn}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "value") node.value = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element with attributes. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Show a short message in the corner; kind is "error", "warn", "ok" or "" (neutral). */
export function toast(message, kind = "", ms = 5000) {
  let box = document.querySelector(".toasts");
  if (!box) {
    box = el("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(box);
  }
  const note = el("div", { class: `notice ${kind}` }, message);
  box.append(note);
  setTimeout(() => note.remove(), ms);
}

/** Wire the API key box of the top bar (if the page has one). */
export function initApiKeyBox() {
  const input = document.getElementById("api-key");
  if (!input) return;
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("api_key");
  if (fromUrl) {
    setApiKey(fromUrl);
    // Out of the address bar and history at once; the key travels in a header from here on.
    params.delete("api_key");
    const rest = params.toString();
    history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
  }
  input.value = apiKey();
  input.form?.addEventListener("submit", (ev) => ev.preventDefault());
  input.addEventListener("change", () => {
    setApiKey(input.value.trim());
    toast(input.value.trim() ? "API key saved in this browser." : "API key cleared.", "ok", 2500);
  });
}

export function truncate(text, max) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function formatMs(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value >= 10000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)}`;
}
