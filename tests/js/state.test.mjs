// URL <-> state round trips and the search request, for the page's pure state module.
import assert from "node:assert/strict";
import { test } from "node:test";

import { emptyFilters } from "../../xretrieve/serve/static/filters.js";
import {
  PAGE,
  hasQuery,
  initialState,
  makeQuery,
  pageSize,
  requestBody,
  stateFromUrl,
  textSearchUrl,
  urlSearch,
} from "../../xretrieve/serve/static/state.js";

// A state as the page holds it after reading `search`, with `indexes` served.
function fromUrl(search, indexes = ["world"]) {
  const u = stateFromUrl(search);
  return {
    ...initialState(),
    indexes: indexes.map((name) => ({ name })),
    index: u.index ?? indexes[0],
    query: u.query,
    filters: u.filters,
    options: u.options,
  };
}

function roundTrip(search, indexes) {
  return urlSearch(fromUrl(search, indexes));
}

test("the initial state has an empty URL", () => {
  assert.equal(urlSearch(initialState()), "");
  assert.equal(roundTrip(""), "");
});

test("defaults stay out of the URL", () => {
  assert.equal(roundTrip("?q=red&sort=score&hybrid=0&wmin=&where=%20%20&year="), "q=red");
  // One index: the URL does not name it; two: it does.
  assert.equal(roundTrip("?q=red&index=world"), "q=red");
  assert.equal(roundTrip("?q=red&index=again", ["world", "again"]), "q=red&index=again");
});

test("a full URL round-trips in a fixed order", () => {
  const search =
    "q=a+red+circle&index=b&folder=test&year=2024&wmin=1&wmax=2&hmin=3&hmax=4&bmin=5&bmax=6" +
    "&where=width+%3E%3D+0&hybrid=1&sort=mtime";
  assert.equal(roundTrip("?" + search, ["a", "b"]), search);
  // The same parameters in another order come back in the page's order.
  assert.equal(roundTrip("?sort=mtime&hybrid=1&q=x&folder=test"), "q=x&folder=test&hybrid=1&sort=mtime");
});

test("odd characters survive the round trip", () => {
  for (const text of ["it's \"quoted\" & <b>bold</b>", "a+b=c?d#e%f", "日本語 ✓", "  spaced  ", "new\nline"]) {
    const state = { ...initialState(), query: makeQuery({ text }), filters: { ...emptyFilters(), where: text } };
    const back = stateFromUrl("?" + urlSearch(state));
    assert.equal(back.query.text, text);
    assert.equal(back.filters.where, text);
  }
});

test("an item query wins over text, and an image query keeps only the options", () => {
  const u = stateFromUrl("?id=abc123&q=ignored");
  assert.deepEqual(u.query, { text: "", id: "abc123", label: "abc123", image: null });
  assert.equal(roundTrip("?id=abc123&q=ignored"), "id=abc123");
  const image = { ...initialState(), query: makeQuery({ image: { name: "x.png" } }) };
  image.options = { hybrid: true, sort: "mtime" };
  assert.equal(urlSearch(image), "hybrid=1&sort=mtime");
});

test("the folder filter tells 'any' from the top-level folder", () => {
  assert.equal(stateFromUrl("?q=x").filters.folder, null);
  assert.equal(stateFromUrl("?q=x&folder=").filters.folder, "");
  assert.equal(roundTrip("?q=x&folder="), "q=x&folder=");
  assert.equal(roundTrip("?q=x"), "q=x");
});

test("number fields keep only numbers, as a number box does", () => {
  const f = stateFromUrl("?wmin=12&wmax=abc&hmin=1e3&hmax=-4.5&bmin=+5&bmax=5.").filters;
  assert.deepEqual([f.wmin, f.wmax, f.hmin, f.hmax, f.bmin, f.bmax], ["12", "", "1e3", "-4.5", "", ""]);
});

test("unknown sort values fall back to relevance; filters open when the URL has one", () => {
  assert.equal(stateFromUrl("?sort=bogus").options.sort, "score");
  assert.equal(stateFromUrl("?q=x").filtersOpen, false);
  assert.equal(stateFromUrl("?q=x&where=").filtersOpen, true);
});

test("the caption links search the text on the same index, without filters", () => {
  const state = fromUrl("?q=x&folder=test&hybrid=1&index=b", ["a", "b"]);
  assert.equal(textSearchUrl(state, "a red & blue"), "q=a+red+%26+blue&index=b");
});

test("hasQuery", () => {
  assert.equal(hasQuery(makeQuery({})), false);
  assert.equal(hasQuery(makeQuery({ text: "x" })), true);
  assert.equal(hasQuery(makeQuery({ id: "i" })), true);
});

test("the page asks for its own k, cut at the server's max_k", () => {
  assert.equal(PAGE, 24);
  assert.equal(pageSize(0, {}), 24);
  assert.equal(pageSize(0, { max_k: 100 }), 24);
  assert.equal(pageSize(90, { max_k: 100 }), 10);
  assert.equal(pageSize(100, { max_k: 100 }), 0);
});

test("the search body: k always, structured filters, the free WHERE trimmed", () => {
  const state = fromUrl("?q=red&folder=test&year=2024&wmin=10&where=%20path+LIKE+'%25a%25'%20&hybrid=1");
  assert.deepEqual(requestBody(state, 24), {
    modality: "image",
    k: 24,
    offset: 24,
    text: "red",
    id: null,
    hybrid: true,
    sort: "score",
    where: "path LIKE '%a%'",
    filters: [
      { column: "folder", op: "=", value: "test" },
      { column: "year", op: "=", value: 2024 },
      { column: "width", op: ">=", value: 10 },
    ],
    index: "world",
  });
  // No filters: neither field carries any SQL.
  const plain = requestBody(fromUrl("?q=red"), 0);
  assert.equal(plain.k, 24);
  assert.equal(plain.where, null);
  assert.equal("filters" in plain, false);
  // An item query sends no text, and hybrid needs text.
  const item = requestBody(fromUrl("?id=abc&hybrid=1"), 0);
  assert.equal(item.text, null);
  assert.equal(item.id, "abc");
  assert.equal(item.hybrid, false);
});
