// Small helpers for a page built from text only: elements with attributes, one-line messages.
//
// Everything that comes from the user or the index (captions, paths, metadata, error
// messages) reaches the page through textContent / setAttribute, never as HTML.

export const $ = (id) => document.getElementById(id);

// An element with string attributes (null, undefined and false leave one out) and text.
export function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// The first line of a message, at most 300 characters: errors never show a stack trace.
export function oneLine(message) {
  const line = String(message ?? "").split(/\r?\n/, 1)[0].trim();
  return line.length > 300 ? line.slice(0, 299) + "\u2026" : line;
}

export function basename(path) {
  const parts = String(path || "").split("/");
  return parts[parts.length - 1] || String(path || "");
}

// A metadata value as text: integers as they are, other numbers to 6 digits, objects as JSON.
export function metaValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// A score to 3 decimals (blank when it is not a number).
export function scoreText(value) {
  const score = Number(value);
  return Number.isFinite(score) ? score.toFixed(3) : "";
}
