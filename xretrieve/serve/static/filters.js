// Facet choices -> the structured filters the API takes. Pure: no DOM (Node's tests import it).
//
// The page never writes SQL for a facet: each choice becomes `{column, op, value}` and the
// server quotes the value, checks the column and sandboxes the WHERE it builds. The free
// WHERE box is a power user's own SQL and goes to the server as `where`, trimmed.

// The filter fields, in URL order. `folder` is null for "any" ("" is the top-level folder);
// the others are strings as typed or chosen, "" for none.
export const FILTER_FIELDS = ["folder", "year", "wmin", "wmax", "hmin", "hmax", "bmin", "bmax", "where"];
// The range facets: metadata column, the field of its minimum, the field of its maximum.
export const RANGES = [["width", "wmin", "wmax"], ["height", "hmin", "hmax"], ["bytes", "bmin", "bmax"]];

export function emptyFilters() {
  return { folder: null, year: "", wmin: "", wmax: "", hmin: "", hmax: "", bmin: "", bmax: "", where: "" };
}

// A typed number as an integer (truncated), or null when the text is blank or not a number.
export function intOrNull(value) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const n = Number(value);
  return Number.isFinite(n) ? Math.trunc(n) : null;
}

// The structured filters for the facet choices (the free WHERE is not among them).
export function toFilters(f) {
  const out = [];
  if (f.folder !== null && f.folder !== undefined) {
    out.push({ column: "folder", op: "=", value: String(f.folder) });
  }
  const year = intOrNull(f.year);
  if (year !== null) out.push({ column: "year", op: "=", value: year });
  for (const [column, lo, hi] of RANGES) {
    const a = intOrNull(f[lo]);
    const b = intOrNull(f[hi]);
    if (a !== null) out.push({ column, op: ">=", value: a });
    if (b !== null) out.push({ column, op: "<=", value: b });
  }
  return out;
}

// The free WHERE box, trimmed; null when blank.
export function freeWhere(f) {
  const text = String(f.where ?? "").trim();
  return text || null;
}
