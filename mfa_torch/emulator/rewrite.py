"""Rewriting the few MSL constructs that are not C++, token by token (never with regexes over raw text):
`threadgroup T x[N];` declarations, function constants and `is_function_constant_defined`, `h` / `bf`
literal suffixes, and [[attributes]] (meaningless to g++, and `threadgroup` in [[threadgroup(0)]] is a
macro there). For profile builds, `/` and `/=` also become counted divisions (shim/msl/division_count.hpp). Rewrites keep every newline, so line markers stay valid and diagnostics name the .metal
file and line.
"""
import dataclasses
import math
import re
import struct

from .tokens import attribute_groups, fail_at, integer_constant, is_attribute_start, matching, split_top_level, tokenize


@dataclasses.dataclass(frozen=True)
class FunctionConstant:
    name: str
    index: int
    type: str
    value: object  # None when not defined


def _has_top_level(tokens, texts):
    """Whether one of `texts` occurs in tokens outside [] (array bounds may contain any operator)."""
    depth = 0
    for t in tokens:
        depth += (t.text == "[") - (t.text == "]")
        if depth == 0 and t.text in texts:
            return True
    return False


def _literal(type_name, value):
    """C++ expression of a function constant's value."""
    base = type_name.split("::")[-1]
    if base == "bool":
        return "true" if value else "false"
    if base in ("float", "half", "bfloat"):
        f = struct.unpack("f", struct.pack("f", float(value)))[0]
        if math.isnan(f):
            return f'{type_name}(__builtin_nanf(""))'
        if math.isinf(f):
            return f"{type_name}({'-' if f < 0 else ''}__builtin_huge_valf())"
        return f"{type_name}({f.hex()}f)"
    return f"{type_name}({int(value)})"


class Rewriter:
    def __init__(self, text, function_constants, count_divisions=False):
        self.text = text
        self.count_divisions = count_divisions
        self.tokens = tokenize(text)
        self.values = function_constants or {}
        self.edits = []  # (start, end, replacement)
        self.constants = {}  # name -> FunctionConstant
        self.used_values = set()
        self.threadgroup_declarations = 0

    def replace(self, first, last, replacement):
        """Replace tokens[first..last] keeping the newlines they spanned."""
        start, end = self.tokens[first].start, self.tokens[last].end
        self.edits.append((start, end, replacement + "\n" * self.text.count("\n", start, end)))

    def run(self):
        depth, i, toks = 0, 0, self.tokens
        while i < len(toks):
            t = toks[i]
            if t.text == "{":
                depth += 1
            elif t.text == "}":
                depth -= 1
            elif t.kind == "ident" and t.text == "constant" and depth == 0:
                i = self.function_constant(i)
                continue
            elif t.kind == "ident" and t.text == "is_function_constant_defined":
                i = self.defined_query(i)
                continue
            elif t.kind == "ident" and t.text == "threadgroup" and depth > 0 and i and toks[i - 1].text in ("{", "}", ";"):
                i = self.threadgroup_declaration(i)
                continue
            elif is_attribute_start(toks, i):
                # attributes mean nothing to g++, and `threadgroup` in [[threadgroup(0)]] is a macro there
                end = matching(toks, i)
                self.replace(i, end, "")
                i = end + 1
                continue
            elif t.kind == "number":
                self.literal(i)
            elif self.count_divisions and t.text in ("/", "/=") and toks[i - 1].text != "operator":
                self.replace(i, i, "/ ::msl_rt::division_probe /" if t.text == "/" else "/= ::msl_rt::DivisionProbe{} =")
            i += 1
        unknown = [k for k in self.values if k not in self.used_values]
        if unknown:
            raise ValueError(f"function_constants: no function constant named or indexed {unknown[0]!r} in the source")

    def function_constant(self, i):
        toks = self.tokens
        end = i
        while end < len(toks) and toks[end].text not in (";", "{"):
            end += 1
        attrs = [a for a in attribute_groups(toks[i:end]) if a[0] == "function_constant"]
        if not attrs:
            return i + 1
        start_attr = next(j for j in range(i, end) if is_attribute_start(toks, j))
        name_tok = toks[start_attr - 1]
        type_name = " ".join(t.text for t in toks[i + 1:start_attr - 1])
        index = integer_constant(attrs[0][1], "function_constant")
        key = name_tok.text if name_tok.text in self.values else index if index in self.values else None
        value = None if key is None else self.values[key]
        if key is not None:
            self.used_values.add(key)
        self.constants[name_tok.text] = FunctionConstant(name_tok.text, index, type_name, value)
        initial = _literal(type_name, value if value is not None else 0)
        self.replace(i, end, f"static constexpr {type_name} {name_tok.text} = {initial};")
        return end + 1

    def defined_query(self, i):
        toks = self.tokens
        if i + 3 >= len(toks) or toks[i + 1].text != "(" or toks[i + 3].text != ")":
            fail_at(toks[i], "is_function_constant_defined takes the name of a function constant")
        constant = self.constants.get(toks[i + 2].text)
        if constant is None:
            fail_at(toks[i + 2], f"{toks[i + 2].text} is not a function constant declared before this point")
        self.replace(i, i + 3, "true" if constant.value is not None else "false")
        return i + 4

    def threadgroup_declaration(self, i):
        """`threadgroup T a[N], b;` -> `auto& a = msl_rt::threadgroup_object<T[N], id>(); ...`"""
        toks = self.tokens
        end = i
        while end < len(toks) and toks[end].text not in (";", "{", "}"):
            end += 1
        body = toks[i + 1:end]
        parts = split_top_level(body)
        if not parts or toks[end].text != ";" or _has_top_level(body, ("*", "&", "&&", "=", "(")):
            return i + 1  # a pointer or reference declaration: `threadgroup` is just an address space
        declarators, type_tokens = [], None
        for part in parts:
            bracket = next((j for j, t in enumerate(part) if t.text == "["), len(part))
            if bracket == 0 or part[bracket - 1].kind != "ident":
                fail_at(part[0], "cannot parse this threadgroup declaration")
            if type_tokens is None:
                type_tokens = part[:bracket - 1]
                if not type_tokens:
                    fail_at(part[0], "threadgroup declaration without a type")
            declarators.append((part[bracket - 1].text, " ".join(t.text for t in part[bracket:])))
        type_text = " ".join(t.text for t in type_tokens)
        out = []
        for name, dims in declarators:
            out.append(f"auto& {name} = ::msl_rt::threadgroup_object<{type_text} {dims}, {self.threadgroup_declarations}>();")
            self.threadgroup_declarations += 1
        self.replace(i, end, " ".join(out))
        return end + 1

    def literal(self, i):
        t = self.tokens[i]
        m = re.fullmatch(r"([0-9.]+(?:[eE][+-]?[0-9]+)?)(h|H|bf|BF)", t.text)
        if not m or t.text.lower().startswith("0x"):
            return
        number = m.group(1) if re.search(r"[.eE]", m.group(1)) else m.group(1) + ".0"
        kind = "half" if m.group(2) in ("h", "H") else "bfloat"
        self.replace(i, i, f"{kind}({number}f)")

    def rewritten(self):
        out, pos = [], 0
        for start, end, replacement in sorted(self.edits):
            out.append(self.text[pos:start])
            out.append(replacement)
            pos = end
        out.append(self.text[pos:])
        return "".join(out)
