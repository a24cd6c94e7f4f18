// The server's API: fetch wrappers with one-line errors, and the token. Nothing runs at import.
//
// A token, when the server asks for one (401), lives in sessionStorage only. A request given
// an AbortSignal rejects with the fetch's own AbortError when it is aborted, never with an
// ApiError: a superseded request is not an error for the page.

import { oneLine } from "./dom.js";

const TOKEN_KEY = "xretrieve.token";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function dropToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Whether an error is an aborted request's.
export function isAbort(err) {
  return Boolean(err) && err.name === "AbortError";
}

// The one-line message of an error answer: the JSON error body, FastAPI's detail, or the status.
async function errorOf(res) {
  let type = "HTTPError";
  let message = `HTTP ${res.status} ${res.statusText || ""}`.trim();
  try {
    const data = await res.json();
    if (data && data.error && typeof data.error === "object") {
      type = data.error.type || type;
      message = data.error.message || message;
    } else if (data && typeof data.detail === "string") {
      message = data.detail;
    } else if (data && Array.isArray(data.detail) && data.detail.length) {
      message = String(data.detail[0].msg || message);
    }
  } catch (e) {
    if (isAbort(e)) throw e;
    // Not JSON (a proxy's page, say): the status line is the message.
  }
  return new ApiError(res.status, type, oneLine(message));
}

// GET `path` (or POST `json` / a `form`), with the token; the JSON answer or an ApiError.
export async function api(path, options) {
  const { json, form, signal } = options || {};
  const headers = { Accept: "application/json" };
  const t = getToken();
  if (t) headers.Authorization = "Bearer " + t;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body, signal });
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(0, "NetworkError", "cannot reach the server");
  }
  if (res.ok) return res.json();
  throw await errorOf(res);
}

export function listIndexes() {
  return api("/api/indexes");
}

// One page of a search: the JSON body, or a form with it in `q` beside an uploaded image.
export function searchPage(body, image, signal) {
  if (!image) return api("/api/search", { json: body, signal });
  const form = new FormData();
  form.append("q", JSON.stringify(body));
  form.append("image", image, image.name || "image");
  return api("/api/search", { form, signal });
}

export function nearestCaptions(body, signal) {
  return api("/api/caption", { json: body, signal });
}

// A thumbnail / file URL: the index and, for <img> which cannot send headers, the token.
export function mediaUrl(path, index, extra) {
  const url = new URL(path, location.origin);
  if (index) url.searchParams.set("index", index);
  for (const [k, v] of Object.entries(extra || {})) url.searchParams.set(k, String(v));
  const t = getToken();
  if (t) url.searchParams.set("token", t);
  return url.pathname + url.search;
}
