"""XAPI's `get_all_records_where` expression language.

Grammar: `expr := term ("or" term)*`, `term := factor ("and" factor)*`,
`factor := "not" factor | "(" expr ")" | "true" | "false" | value "=" value | value "<>" value`,
`value := field "<name>" | "<literal>"`. Field names are database column names: a `__` stands
for the `_` of a dotted name (`name__label` is `name_label`); values compare as the strings
XAPI stores (ints as decimal strings, booleans as `true`/`false`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import XapiError

Pred = Callable[[dict[str, Any]], bool]
_TOKEN = re.compile(r'\s*(?:(\()|(\))|(<>|=)|"((?:[^"\\]|\\.)*)"|([A-Za-z_]+))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(text)
        pos = m.end()
        lpar, rpar, op, string, word = m.groups()
        if lpar or rpar:
            out.append(("p", lpar or rpar))
        elif op:
            out.append(("op", op))
        elif string is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", string)))
        else:
            out.append(("word", word.lower()))
    return out


def _error(text: str) -> XapiError:
    return XapiError("INTERNAL_ERROR", f"Expression_error: cannot parse {text!r}")


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return repr(value)
    return str(value)


class _Parser:
    def __init__(self, text: str, fields: set[str]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0
        self.fields = fields

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _error(self.text)
        self.pos += 1
        return tok

    def parse(self) -> Pred:
        if not self.toks:
            return lambda rec: True
        pred = self.expr()
        if self.peek() is not None:
            raise _error(self.text)
        return pred

    def expr(self) -> Pred:
        left = self.term()
        while self.peek() == ("word", "or"):
            self.take()
            left = _either(left, self.term())
        return left

    def term(self) -> Pred:
        left = self.factor()
        while self.peek() == ("word", "and"):
            self.take()
            left = _both(left, self.factor())
        return left

    def factor(self) -> Pred:
        tok = self.take()
        if tok == ("word", "not"):
            inner = self.factor()
            return lambda rec: not inner(rec)
        if tok == ("p", "("):
            inner = self.expr()
            if self.take() != ("p", ")"):
                raise _error(self.text)
            return inner
        if tok in (("word", "true"), ("word", "false")):
            value = tok[1] == "true"
            return lambda rec: value
        self.pos -= 1
        left = self.value()
        kind, op = self.take()
        if kind != "op":
            raise _error(self.text)
        right = self.value()
        if op == "=":
            return lambda rec: left(rec) == right(rec)
        return lambda rec: left(rec) != right(rec)

    def value(self) -> Callable[[dict[str, Any]], str]:
        kind, text = self.take()
        if kind == "str":
            return lambda rec: text
        if (kind, text) != ("word", "field"):
            raise _error(self.text)
        kind, name = self.take()
        if kind != "str":
            raise _error(self.text)
        column = name.replace("__", "_")
        if column not in self.fields:
            raise XapiError("INTERNAL_ERROR", f"Db_exn.DBCache_NotFound: missing column {name}")
        return lambda rec: _as_text(rec.get(column))


def _either(a: Pred, b: Pred) -> Pred:
    return lambda rec: a(rec) or b(rec)


def _both(a: Pred, b: Pred) -> Pred:
    return lambda rec: a(rec) and b(rec)


def compile_filter(text: str, fields: set[str]) -> Pred:
    """A predicate over records for `text` (INTERNAL_ERROR if it does not parse)."""
    if not isinstance(text, str):
        raise XapiError("FIELD_TYPE_ERROR", "expr")
    return _Parser(text, fields).parse()
