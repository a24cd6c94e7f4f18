// Facet choices -> structured filters, for the page's pure filters module.
import assert from "node:assert/strict";
import { test } from "node:test";

import { emptyFilters, freeWhere, intOrNull, toFilters } from "../../xretrieve/serve/static/filters.js";

const choose = (f) => toFilters({ ...emptyFilters(), ...f });

test("no choice, no filter", () => {
  assert.deepEqual(toFilters(emptyFilters()), []);
  assert.equal(freeWhere(emptyFilters()), null);
});

test("folder: null is any, the empty string is the top-level folder", () => {
  assert.deepEqual(choose({ folder: null }), []);
  assert.deepEqual(choose({ folder: "" }), [{ column: "folder", op: "=", value: "" }]);
  assert.deepEqual(choose({ folder: "beach" }), [{ column: "folder", op: "=", value: "beach" }]);
});

test("values that look like SQL stay values", () => {
  const attack = "' OR 1=1 --";
  assert.deepEqual(choose({ folder: attack }), [{ column: "folder", op: "=", value: attack }]);
  // A year that is not a number is no filter at all, never text in a query.
  assert.deepEqual(choose({ year: "2024 OR 1=1" }), []);
});

test("year and the ranges become integer comparisons, in a fixed order", () => {
  assert.deepEqual(choose({ year: "2024", wmin: "10", wmax: "20.9", hmin: " 3 ", bmax: "1e3", hmax: "x" }), [
    { column: "year", op: "=", value: 2024 },
    { column: "width", op: ">=", value: 10 },
    { column: "width", op: "<=", value: 20 },
    { column: "height", op: ">=", value: 3 },
    { column: "bytes", op: "<=", value: 1000 },
  ]);
  assert.deepEqual(choose({ wmin: "0" }), [{ column: "width", op: ">=", value: 0 }]);
});

test("intOrNull", () => {
  for (const blank of ["", "  ", null, undefined, "abc", "Infinity"]) assert.equal(intOrNull(blank), null);
  assert.equal(intOrNull("-4.7"), -4);
  assert.equal(intOrNull(7), 7);
});

test("the free WHERE is trimmed and kept apart from the facets", () => {
  const f = { ...emptyFilters(), folder: "a", where: "  year > 1 OR width < 3 " };
  assert.equal(freeWhere(f), "year > 1 OR width < 3");
  assert.deepEqual(toFilters(f), [{ column: "folder", op: "=", value: "a" }]);
  assert.equal(freeWhere({ ...emptyFilters(), where: " \t " }), null);
});
