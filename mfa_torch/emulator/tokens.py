"""A small C++ tokenizer for preprocessed MSL (the output of `g++ -E`).

It knows exactly what the source rewriter needs: identifiers, numbers (pp-numbers, so `1.5h` is one
token), string and character literals, punctuators, and GNU line markers (`# 12 "file.metal"`), which it
follows so that every token knows its .metal file and line.
"""
import dataclasses
import re

from .errors import CompileError

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<directive>(?<![^\n])[ \t]*\#[^\n]*)
  | (?P<number>\.?[0-9](?:[eEpP][+-]|[0-9A-Za-z_.'])*)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<string>(?:u8|u|U|L)?"(?:\\.|[^"\\\n])*")
  | (?P<char>(?:u8|u|U|L)?'(?:\\.|[^'\\\n])+')
  | (?P<punct>::|->\*?|\.\.\.|<<=|>>=|<=>|[-+*/%&|^!=<>]=|&&|\|\||\+\+|--|<<|>>|\#\#|[{}\[\]();:,.?~!+\-*/%&|^=<>#@\\$])
    """,
    re.VERBOSE | re.DOTALL,
)
_INDEX_EXPRESSION = re.compile(r"^[0-9()+\-*/%<> ]+$")
_LINE_MARKER = re.compile(r'\s*#\s*(?:line\s+)?(\d+)\s+"((?:\\.|[^"\\])*)"')


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # ident, number, string, char, punct
    text: str
    start: int  # offsets into the tokenized text
    end: int
    file: str
    line: int


class TokenizeError(ValueError):
    pass


def tokenize(text, file="<source>"):
    """Tokens of `text`, skipping whitespace, comments and preprocessor lines (line markers are followed)."""
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise TokenizeError(f"{file}:{line}: cannot tokenize {text[pos:pos + 20]!r}")
        kind, value = m.lastgroup, m.group()
        if kind == "directive":
            marker = _LINE_MARKER.match(value)
            if marker:
                line, file = int(marker.group(1)) - 1, marker.group(2).encode().decode("unicode_escape")
        elif kind not in ("space", "newline", "comment"):
            tokens.append(Token(kind, value, m.start(), m.end(), file, line))
        line += value.count("\n")
        pos = m.end()
    return tokens


def matching(tokens, i):
    """Index of the bracket closing tokens[i], one of ( [ { or a template argument list's <
    (None if unbalanced)."""
    close = {"(": ")", "[": "]", "{": "}", "<": ">"}[tokens[i].text]
    depth, j = 0, i
    while j < len(tokens):
        t = tokens[j].text
        if close == ">" and t in "([{" and j > i:
            j = matching(tokens, j)
            if j is None:
                return None
        elif close == ">" and t in (")", "]", "}", ";"):
            return None
        elif t == tokens[i].text:
            depth += 1
        elif t == close or (close == ">" and t == ">>"):
            depth -= 2 if t == ">>" else 1
            if depth <= 0:
                return j
        j += 1
    return None


def split_top_level(tokens, separator=","):
    """Split a token list at separators outside (), [], {} and template <>."""
    parts, current, depth, angle = [], [], 0, 0
    for t in tokens:
        if t.text in ("(", "[", "{"):
            depth += 1
        elif t.text in (")", "]", "}"):
            depth -= 1
        elif depth == 0 and t.text == "<" and current and current[-1].kind == "ident":
            angle += 1
        elif depth == 0 and t.text == ">" and angle:
            angle -= 1
        elif depth == 0 and t.text == ">>" and angle:
            angle = max(0, angle - 2)
        if t.text == separator and depth == 0 and angle == 0:
            parts.append(current)
            current = []
        else:
            current.append(t)
    if current:
        parts.append(current)
    return parts


def fail_at(token, message):
    raise CompileError(f"{token.file}:{token.line}: {message}")


def is_attribute_start(tokens, i):
    return i + 1 < len(tokens) and tokens[i].text == "[" and tokens[i + 1].text == "["


def attribute_groups(tokens):
    """[(name, argument tokens or None, first token)] of all [[...]] groups in tokens."""
    found, i = [], 0
    while i < len(tokens):
        if is_attribute_start(tokens, i):
            end = matching(tokens, i)
            if end is None:
                fail_at(tokens[i], "unbalanced [[ attribute")
            for part in split_top_level(tokens[i + 2:end - 1]):
                args = None
                if len(part) > 1 and part[1].text == "(":
                    args = part[2:matching(part, 1)]
                found.append((part[0].text, args, part[0]))
            i = end + 1
        else:
            i += 1
    return found


def integer_constant(tokens, what):
    text = " ".join(re.sub(r"[uUlL]+$", "", t.text) for t in tokens)
    if not _INDEX_EXPRESSION.match(text):
        fail_at(tokens[0], f"{what} index must be an integer constant, got {text!r}")
    return int(eval(text.replace("/", "//"), {"__builtins__": {}}))  # digits and operators only
