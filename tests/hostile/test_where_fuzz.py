"""Fuzzing the WHERE filter: every input is refused cleanly or gives the reference's rows.

Three seeded families: expressions drawn from a typed grammar (all must evaluate, to the rows a
small Python evaluator with SQL's three-valued logic picks), those expressions mutated token by
token, and soups of random tokens (SQL keywords, hostile fragments, comments, brackets). A
mutant or soup the filter accepts is read back by a small precedence parser that mirrors
DuckDB's and must give the same rows; one it refuses must fail with a one-line InputError.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

import pyarrow as pa

from xretrieve.errors import InputError
from xretrieve.query.filters import Filter, WhereLimits, parse_where

SEED = 20_240_611
N_GRAMMAR, N_MUTANT, N_SOUP = 1500, 1250, 1250
LIMIT_S = 2.0

Node = tuple[Any, ...]
NUM_COLS, STR_COLS = ("width", "height", "line"), ("path", "folder", "caption")
CMP = ("=", "<>", "!=", "<", "<=", ">", ">=")
HOSTILE = [
    ") QUALIFY row_number() OVER () < 3 --",
    ") USING SAMPLE 1 --",
    "OR path IN (SELECT path FROM shard_0)",
    "OR EXISTS (SELECT 1 FROM duckdb_settings())",
    "; SELECT 1",
    ") UNION SELECT 1 --",
    "AND current_setting('threads') = '1'",
    "OR getenv('HOME') IS NULL",
    "AND read_parquet('x') IS NULL",
    "FROM shard_0",
    "AS x",
    "OVER ()",
]
WORDS = """AND OR NOT IS IN BETWEEN LIKE ILIKE GLOB SELECT FROM WHERE QUALIFY USING SAMPLE WITH
RECURSIVE UNION ALL AS ORDER BY LIMIT GROUP HAVING OVER CASE WHEN THEN ELSE END CAST VARCHAR
EXISTS ANY lower upper length abs current_setting read_parquet"""
VOCAB = [
    *NUM_COLS,
    *STR_COLS,
    *("row", '"Width"', "colour", "t.width", "*", "0", "1", "-5", "7", "2.5", "'a'", "'a%'"),
    *("'A/x.jpg'", "'it''s'", "NULL", "TRUE", "FALSE", *CMP, "+", "-", "*", "/", "%", "||"),
    *("(", "(", ")", ")", ",", ";", "::", "?", "$1", ".", *WORDS.split()),
    *("duckdb_settings()", "getenv('HOME')", "range(3)", "--", "/*", "*/"),
]


def _table(rng: random.Random, n: int = 48) -> pa.Table:
    def pick(options: list[Any]) -> list[Any]:
        return [rng.choice(options) for _ in range(n)]

    nums = [None, 0, 1, 5, 7, 10, 64, 100, 640, 1024, 2000]
    return pa.table(
        {
            "row": pa.array(range(n), pa.int64()),
            "width": pa.array(pick(nums), pa.int32()),
            "height": pa.array(pick(nums), pa.int32()),
            "line": pa.array(pick([None, None, 0, 1, 2, 5]), pa.int32()),
            "path": pa.array(pick(["a/x.jpg", "b/Y.PNG", "a/b/c.jpg", "2024/kite.jpg", "", "A/x"])),
            "folder": pa.array(pick(["a", "b", "A", None, "2024", "it's"])),
            "caption": pa.array(pick(["a red kite", "Two boats", None, "", "it's a%"])),
        }
    )


# -- the typed grammar ---------------------------------------------------------------------


def _num(rng: random.Random, d: int) -> Node:
    k = rng.randrange(9 if d > 0 else 2)
    if k == 0:
        return ("col", rng.choice(NUM_COLS))
    if k == 1:
        return ("lit", rng.choice([0, 1, 2, 5, 7, 10, 64, 100, 1024, -3]))
    if k in (2, 3):
        return ("arith", rng.choice("+-"), _num(rng, d - 1), _num(rng, d - 1))
    if k == 4:
        return ("arith", "*", _num(rng, 0), ("lit", rng.choice([-2, 0, 1, 3])))
    if k == 5:
        return ("neg", _num(rng, d - 1))
    if k == 6:
        return ("fn", "abs", _num(rng, d - 1))
    if k == 7:
        return ("fn", "length", _str(rng, d - 1))
    return ("lit", None)


def _str(rng: random.Random, d: int) -> Node:
    k = rng.randrange(5 if d > 0 else 2)
    if k == 0:
        return ("col", rng.choice(STR_COLS))
    if k == 1:
        return ("lit", rng.choice(["a", "A/x", "a/x.jpg", "", "it's", "kite", "2024/kite.jpg"]))
    if k == 2:
        return ("fn", rng.choice(["lower", "upper"]), _str(rng, d - 1))
    return ("concat", _str(rng, d - 1), _str(rng, d - 1))


def _bool(rng: random.Random, d: int) -> Node:
    k = rng.randrange(12 if d > 0 else 6)
    side = rng.choice([_num, _str])
    if k in (0, 1):
        return ("cmp", rng.choice(CMP), side(rng, d - 1), side(rng, d - 1))
    if k == 2:
        return ("isnull", rng.choice([_num, _str, _bool])(rng, d - 1), rng.random() < 0.5)
    if k == 3:
        return ("between", side(rng, d - 1), side(rng, 0), side(rng, 0), rng.random() < 0.3)
    if k == 4:
        items = [_num(rng, 0) if side is _num else _str(rng, 0) for _ in range(rng.randint(1, 4))]
        items = [i if i[0] == "lit" else ("lit", None) for i in items]
        return ("in", side(rng, d - 1), items, rng.random() < 0.3)
    if k == 5:
        pat = "".join(
            rng.choice(["a", "A", "/", "x", ".", "%", "_", "kite", "'"]) for _ in range(4)
        )
        return ("like", _str(rng, d - 1), pat, rng.random() < 0.3, rng.random() < 0.3)
    if k in (6, 7, 8):
        return (rng.choice(["and", "or"]), _bool(rng, d - 1), _bool(rng, d - 1))
    if k == 9:
        return ("not", _bool(rng, d - 1))
    if k == 10:
        return ("lit", rng.choice([True, False]))
    return ("cmp", rng.choice(CMP), _num(rng, d - 1), ("lit", None))


# Binding strength, weakest first, as DuckDB's grammar has it.
PREC = {"or": 1, "and": 2, "not": 3, "isnull": 4, "cmp": 5, "between": 6, "in": 6, "like": 6}
PREC |= {"concat": 7, "+": 8, "-": 8, "*": 9, "neg": 10, "col": 11, "lit": 11, "fn": 11}


def _prec(n: Node) -> int:
    return PREC[n[1]] if n[0] == "arith" else PREC[n[0]]


def _lit(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def _render(n: Node, rng: random.Random) -> list[str]:
    """Tokens of `n`: brackets only where precedence needs them, plus a few spare ones."""

    def sub(c: Node, at_least: int) -> list[str]:
        toks = _render(c, rng)
        return ["(", *toks, ")"] if _prec(c) < at_least or rng.random() < 0.08 else toks

    kind = n[0]
    if kind == "col":
        return [rng.choice([n[1], n[1].upper(), f'"{n[1]}"', n[1].capitalize()])]
    if kind == "lit":
        return [_lit(n[1])]
    if kind in ("and", "or"):
        p = PREC[kind]
        return [*sub(n[1], p), rng.choice([kind.upper(), kind]), *sub(n[2], p + 1)]
    if kind == "not":
        return [rng.choice(["NOT", "not"]), *sub(n[1], 3)]
    if kind == "isnull":
        return [*sub(n[1], 5), "IS", *(["NOT"] if n[2] else []), "NULL"]
    if kind == "cmp":
        return [*sub(n[2], 6), n[1], *sub(n[3], 6)]
    if kind == "between":
        neg = ["NOT"] if n[4] else []
        return [*sub(n[1], 7), *neg, "BETWEEN", *sub(n[2], 11), "AND", *sub(n[3], 11)]
    if kind == "in":
        items = [t for i in n[2] for t in (",", _lit(i[1]))][1:]
        return [*sub(n[1], 7), *(["NOT"] if n[3] else []), "IN", "(", *items, ")"]
    if kind == "like":
        op = [*(["NOT"] if n[4] else []), "ILIKE" if n[3] else "LIKE"]
        return [*sub(n[1], 7), *op, _lit(n[2])]
    if kind == "concat":
        return [*sub(n[1], 7), "||", *sub(n[2], 8)]
    if kind == "arith":
        p = PREC[n[1]]
        return [*sub(n[2], p), n[1], *sub(n[3], p + 1)]
    if kind == "neg":
        return ["-", *sub(n[1], 11)]
    return [n[1], "(", *_render(n[2], rng), ")"]  # fn


def _spell(tokens: list[str], rng: random.Random) -> str:
    """Join tokens with varied whitespace, sometimes a comment, a trailing ';' or comment."""
    out = tokens[0]
    for t in tokens[1:]:
        out += rng.choice([" ", " ", " ", "\n", "\t ", " /* c */ "]) + t
    return out + rng.choice(["", "", "", ";", " -- the end", "  "])


# -- the reference: SQL three-valued logic in Python -----------------------------------------


class Unsupported(Exception):
    """Outside what the reference evaluates."""


def _like(s: str, pattern: str, ci: bool) -> bool:
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, s.lower() if ci else s, re.S | (re.I if ci else 0)) is not None


def _truth(v: Any) -> bool | None:
    return None if v is None else bool(v)


def _text(v: Any) -> str | None:
    return None if v is None else v if isinstance(v, str) else str(v)


def _eval(n: Node, row: dict[str, Any]) -> Any:
    kind = n[0]
    if kind == "col":
        return row[n[1]]
    if kind == "lit":
        return n[1]
    if kind == "and":
        a, b = _truth(_eval(n[1], row)), _truth(_eval(n[2], row))
        return False if a is False or b is False else None if a is None or b is None else True
    if kind == "or":
        a, b = _truth(_eval(n[1], row)), _truth(_eval(n[2], row))
        return True if a or b else None if a is None or b is None else False
    if kind == "not":
        a = _truth(_eval(n[1], row))
        return None if a is None else not a
    if kind == "isnull":
        return (_eval(n[1], row) is None) != n[2]
    vals = [_eval(c, row) for c in n[1:] if isinstance(c, tuple)]
    if kind == "in":
        x, items = _eval(n[1], row), [_eval(i, row) for i in n[2]]
        got = None if x is None else True if x in items else None if None in items else False
        return None if got is None else got != n[3]
    if kind == "between":  # x >= lo AND x <= hi: false when either is, even beside a NULL
        x, lo, hi = vals
        ge = None if x is None or lo is None else x >= lo
        le = None if x is None or hi is None else x <= hi
        got = False if ge is False or le is False else None if ge is None or le is None else True
        return None if got is None else got != n[4]
    if any(v is None for v in vals):
        return None
    if kind == "cmp":
        a, b = vals
        return {"=": a == b, "<>": a != b, "!=": a != b, "<": a < b, "<=": a <= b}.get(
            n[1], a > b if n[1] == ">" else a >= b
        )
    if kind == "contains":
        return (vals[1] in vals[0]) != n[3]
    if kind == "like":
        if n[2] is None:
            return None
        return _like(_text(vals[0]) or "", n[2], n[3]) != n[4]
    if kind == "concat":
        return "".join(_text(v) or "" for v in vals)
    if kind == "arith":
        a, b = vals
        return a + b if n[1] == "+" else a - b if n[1] == "-" else a * b
    if kind == "neg":
        return -vals[0]
    f, x = n[1], vals[0]
    return (
        x.lower()
        if f == "lower"
        else x.upper()
        if f == "upper"
        else len(x)
        if f == "length"
        else abs(x)
    )


def _rows(tree: Node, records: list[dict[str, Any]]) -> list[int]:
    return [r["row"] for r in records if _eval(tree, r) is True]


# -- reading an accepted mutant or soup back ------------------------------------------------


def _type(n: Node, cols: dict[str, str]) -> str:
    """'num', 'str', 'bool' or 'null'; Unsupported where DuckDB would cast in ways not modelled."""
    kind = n[0]
    if kind == "col":
        return cols[n[1]]
    if kind == "lit":
        v = n[1]
        return (
            "null"
            if v is None
            else "bool"
            if isinstance(v, bool)
            else "str"
            if isinstance(v, str)
            else "num"
        )
    ts = [_type(c, cols) for c in n[1:] if isinstance(c, tuple)]
    if kind == "in":
        ts += [_type(i, cols) for i in n[2]]

    def need(*ok: str) -> None:
        if any(t not in (*ok, "null") for t in ts):
            raise Unsupported(kind)

    if kind in ("and", "or", "not"):
        need("bool", "num")
    elif kind in ("cmp", "between", "in"):
        if len({t for t in ts if t != "null"}) > 1:
            raise Unsupported(kind)
    elif kind in ("like", "contains"):
        need("str")
    elif kind == "concat":
        need("str", "num")
        if any(n[i][0] == "lit" and isinstance(n[i][1], float) for i in (1, 2)):
            raise Unsupported("decimal text")
        return "str"
    elif kind in ("arith", "neg"):
        need("num")
        return "num"
    elif kind == "fn":
        need("num" if n[1] == "abs" else "str")
        return "num" if n[1] in ("abs", "length") else "str"
    return "bool"


class _Reader:
    """A precedence parser for the grammar's tokens, with DuckDB's binding strengths."""

    def __init__(self, tokens: list[str], cols: dict[str, str]) -> None:
        self.t, self.i, self.cols = tokens, 0, cols

    def peek(self, k: int = 0) -> str:
        return self.t[self.i + k].upper() if self.i + k < len(self.t) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if not tok or (want is not None and tok != want):
            raise Unsupported(f"expected {want} at {tok!r}")
        self.i += 1
        return self.t[self.i - 1]

    def read(self) -> Node:
        n = self.level(1)
        if self.i != len(self.t):
            raise Unsupported("trailing tokens")
        return n

    def level(self, p: int) -> Node:
        if p == 1 or p == 2:
            n = self.level(p + 1)
            while self.peek() == ("OR" if p == 1 else "AND"):
                self.take()
                n = ("or" if p == 1 else "and", n, self.level(p + 1))
            return n
        if p == 3:
            if self.peek() == "NOT":
                self.take()
                return ("not", self.level(3))
            n = self.level(4)
            while self.peek() == "IS" or (self.peek() == "NOT" and self.peek(1) == "NULL"):
                neg = self.take().upper() == "NOT" or (self.peek() == "NOT" and bool(self.take()))
                self.take("NULL")
                n = ("isnull", n, neg)
            return n
        # comparison: one, not chained
        n = self.predicate()
        if self.peek() in CMP:
            op = self.take()
            n = ("cmp", op, n, self.predicate())
            if self.peek() in CMP:
                raise Unsupported("chained comparison")
        return n

    def predicate(self) -> Node:
        n = self.binary(7)
        while True:
            neg = self.peek() == "NOT" and self.peek(1) in ("IN", "LIKE", "ILIKE", "BETWEEN")
            if neg:
                self.take()
            word = self.peek()
            if word == "IN" and self.peek(1) != "(":  # x IN 'abc' is contains('abc', x)
                self.take()
                n = ("contains", self.primary(), n, neg)
            elif word == "IN":
                self.take()
                self.take("(")
                items = [self.binary(7)]
                while self.peek() == ",":
                    self.take()
                    if self.peek() != ")":  # DuckDB takes a trailing comma
                        items.append(self.binary(7))
                self.take(")")
                n = ("in", n, items, neg)
            elif word in ("LIKE", "ILIKE"):
                self.take()
                pat = self.primary()
                if pat[0] != "lit" or isinstance(pat[1], (bool, int, float)):
                    raise Unsupported("pattern")
                return ("like", n, pat[1], word == "ILIKE", neg)
            elif word == "BETWEEN":
                self.take()
                lo = self.binary(7)
                self.take("AND")
                n = ("between", n, lo, self.binary(7), neg)
            else:
                if neg:
                    raise Unsupported("NOT")
                return n

    def binary(self, p: int) -> Node:
        if p == 10:
            if self.peek() in ("-", "+"):
                sign = self.take()
                n = self.binary(10)
                return ("neg", n) if sign == "-" else n
            return self.primary()
        ops = {7: ("||",), 8: ("+", "-"), 9: ("*",)}[p]
        n = self.binary(p + 1)
        while self.peek() in ops:
            op = self.take()
            rhs = self.binary(p + 1)
            n = ("concat", n, rhs) if op == "||" else ("arith", op, n, rhs)
        return n

    def primary(self) -> Node:
        tok = self.take()
        up = tok.upper()
        if tok == "(":
            n = self.level(1)
            self.take(")")
            return n
        if up in ("TRUE", "FALSE", "NULL"):
            return ("lit", None if up == "NULL" else up == "TRUE")
        if re.fullmatch(r"-?\d+", tok):
            return ("lit", int(tok))
        if re.fullmatch(r"-?\d+\.\d+", tok):
            return ("lit", float(tok))
        if tok.startswith("'"):
            return ("lit", tok[1:-1].replace("''", "'"))
        if tok.lower() in ("lower", "upper", "length", "abs") and self.peek() == "(":
            self.take("(")
            arg = self.level(1)
            self.take(")")
            return ("fn", tok.lower(), arg)
        name = tok.strip('"').lower()
        if name in self.cols and self.peek() != "(":
            return ("col", name)
        raise Unsupported(tok)


def _strip_comments(tokens: list[str]) -> list[str]:
    """The tokens DuckDB's parser sees: no comments, `1 -5` as `1 - 5`, `SELECT ALL x` as x."""
    while tokens and tokens[-1] == ";":  # the filter drops trailing semicolons first
        tokens = tokens[:-1]
    out: list[str] = []
    it = iter(tokens)
    for t in it:
        if t == "--":
            break
        if t == "/*":
            inner = []
            for u in it:
                if u == "*/":
                    break
                inner.append(u)
            else:
                raise Unsupported("open comment")
            if "/*" in inner:
                raise Unsupported("nested comment")
            continue
        operand = out and (out[-1][-1:] in ")'\"" or out[-1][-1:].isalnum())
        if (
            operand
            and re.fullmatch(r"-\d+(\.\d+)?", t)
            and out[-1].upper() not in ("AND", "OR", "NOT")
        ):
            out += ["-", t[1:]]  # after an operand, the sign is a binary minus
            continue
        out.append(t)
    if out[:1] == ["ALL"]:
        out = out[1:]  # SELECT ALL x is SELECT x
    return out


def _read_back(tokens: list[str], cols: dict[str, str]) -> Node:
    tree = _Reader(_strip_comments(tokens), cols).read()
    if _type(tree, cols) not in ("bool", "num"):
        raise Unsupported("not a condition")
    return tree


# -- mutants and soups ------------------------------------------------------------------------


SWAPS = [list(CMP), ["AND", "OR"], ["+", "-", "*", "||"], ["LIKE", "ILIKE", "IN", "BETWEEN"]]
SWAPS += [
    ["0", "1", "7", "-5", "2.5", "NULL", "width", "height"],
    ["'a'", "'a%'", "path", "caption"],
]


def _mutate(tokens: list[str], rng: random.Random) -> list[str]:
    """1-3 edits: mostly swaps within a token class (often still valid), some junk."""
    out = list(tokens)
    for _ in range(rng.randint(1, 3)):
        k, at = rng.randrange(9), rng.randrange(len(out) + 1)
        if k >= 6:  # a comparison, connective, operator or operand swapped for another
            spots = [(i, c) for i, t in enumerate(out) for c in SWAPS if t.upper() in c]
            if spots:
                i, options = rng.choice(spots)
                out[i] = rng.choice(options)
            else:
                out.insert(at, "NOT")
            continue
        if k == 0:
            out.insert(at, rng.choice(VOCAB))
        elif k == 1 and len(out) > 1:
            del out[min(at, len(out) - 1)]
        elif k == 2 and len(out) > 2:
            j = min(at, len(out) - 2)
            out[j], out[j + 1] = out[j + 1], out[j]
        elif k == 3:
            out[min(at, len(out) - 1)] = rng.choice(VOCAB)
        elif k == 4:
            out += rng.choice(HOSTILE).split()
        else:
            out = ["NOT"] * rng.choice([1, 2, 70]) + out
    return out


def _soup(rng: random.Random) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(rng.randint(1, 14))]


# -- the test ---------------------------------------------------------------------------------


def _run(f: Filter, table: pa.Table, sql: str) -> list[int] | InputError:
    """The filter's rows for `sql`, or the InputError it refused it with."""
    try:
        w = parse_where(sql, columns=table.column_names)
        f.check_type(w, table.schema)
        t0 = time.perf_counter()
        rows = f.allowed_rows(w, "s", table).tolist()
        assert time.perf_counter() - t0 < LIMIT_S, sql
        return rows
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, (sql, msg)
        assert not re.search(r"--[a-z]", msg), (sql, msg)
        return e


def test_fuzz_where_refused_or_same_rows_as_the_reference() -> None:
    rng = random.Random(SEED)
    table = _table(rng)
    cols = {c: "num" if c in (*NUM_COLS, "row") else "str" for c in table.column_names}
    f = Filter(limits=WhereLimits(seconds=LIMIT_S))
    records = table.to_pylist()
    count = {"grammar": 0, "evaluated": 0, "refused": 0, "read_back": 0, "unchecked": 0}

    def case(tokens: list[str], sql: str, reference: list[int] | None) -> None:
        got = _run(f, table, sql)
        if reference is not None:  # a grammar expression must evaluate
            assert not isinstance(got, InputError), (sql, str(got))
            assert got == reference, sql
            count["grammar"] += 1
            return
        if isinstance(got, InputError):
            count["refused"] += 1
            return
        count["evaluated"] += 1
        try:
            tree = _read_back(tokens, cols)
        except Unsupported:
            count["unchecked"] += 1
            return
        assert got == _rows(tree, records), sql
        count["read_back"] += 1

    grammar: list[list[str]] = []
    for _ in range(N_GRAMMAR):
        tree = _bool(rng, rng.randint(1, 5))
        tokens = _render(tree, rng)
        grammar.append(tokens)
        case(tokens, _spell(tokens, rng), _rows(tree, records))
    for _ in range(N_MUTANT):
        tokens = _mutate(rng.choice(grammar), rng)
        case(tokens, " ".join(tokens), None)
    for _ in range(N_SOUP):
        tokens = _soup(rng)
        case(tokens, " ".join(tokens), None)

    assert count["grammar"] == N_GRAMMAR
    assert count["refused"] >= 2000, count
    assert count["read_back"] >= 180, count
    assert count["unchecked"] <= count["read_back"] // 10, count
