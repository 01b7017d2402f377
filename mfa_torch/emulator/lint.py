"""Static address-space lint for Metal Shading Language sources.

The emulator compiles MSL with g++, where `device`, `constant`, `threadgroup` and `thread` are
empty macros, so g++ happily accepts a threadgroup pointer passed where a device pointer is
expected, or a write through a `constant` pointer. Such code does not compile with Apple's
compiler. This lint parses the same sources with libclang, mapping the address spaces to
`__attribute__((address_space(N)))` (plus `const` for `constant`), against a small declaration-only
MSL prelude (lint_prelude/), and reports clang's address-space and constant-write errors.

    python -m mfa_torch.emulator.lint [-I DIR]... PATH...

prints `file:line: message` per finding; exit status 0 clean, 1 findings, 2 usage or parse failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

PRELUDE_DIR = Path(__file__).resolve().parent / "lint_prelude"
PRELUDE_HEADER = PRELUDE_DIR / "msl_lint_prelude.h"

# Shown instead of clang's spelling of the address spaces (clang usually prints the macro name,
# but not always, e.g. inside `constant`, which also carries `const`).
_AS_NAMES = {"1": "device", "2": "constant", "3": "threadgroup"}
_AS_ATTR_RE = re.compile(r"(?:const\s+)?__attribute__\(\(address_space\((\d+)\)\)\)")
_QUOTED_RE = re.compile(r"'([^']*)'")
_AS_WORD_RE = re.compile(r"\b(device|constant|threadgroup)\b")


@dataclasses.dataclass(frozen=True)
class Finding:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class LintError(ValueError):
    """The input could not be linted (unreadable, or not parseable as MSL by the lint)."""


def _clang():
    try:
        import clang.cindex as ci
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise LintError(
            "the MSL lint needs libclang's Python bindings: pip install libclang") from e
    return ci


# ---------------------------------------------------------------------------------------------
# Source rewrites that keep every line where it was (so clang's line numbers are the file's).

_ATTR_RE = re.compile(r"\[\[(.*?)\]\]", re.S)
_FUNC_CONST_RE = re.compile(r"\[\[\s*function_constant\s*\([^\]]*\)\s*\]\]\s*;")
_TG_RE = re.compile(r"\bthreadgroup\b")


def _blank(m: re.Match) -> str:
    # keep newlines so line numbers stay right
    return re.sub(r"[^\n]", " ", m.group(0))


# Attributes whose argument is a binding index: the strict check compares them (no two [[buffer(n)]] alike).
INDEX_ATTRIBUTES = ("buffer", "threadgroup", "texture", "sampler")
_ATTR_NAME_RE = re.compile(r"\s*(\w+)\s*(?:\((.*)\))?\s*$", re.S)
_attr_ids = itertools.count()


def _split_arguments(text: str) -> list[str]:
    """`a(1), b(f(2, 3))` -> ["a(1)", "b(f(2, 3))"]: commas at parenthesis depth 0."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _annotate(m: re.Match, index_typedefs: list) -> str:
    """A kernel parameter's `[[buffer(0)]]` (or a kernel's own attributes) as clang annotations the AST keeps:
    `annotate("msl:buffer#7")`, with the index expression evaluated by clang as the array size of a typedef
    `__lint_attr_7` (appended to the file). Attributes anywhere else are blanked."""
    after = m.string[m.end():].lstrip()
    if not (after[:1] in (",", ")") or re.match(r"kernel\b", after)):
        return _blank(m)
    annotations = []
    for attr in _split_arguments(m.group(1)):
        parsed = _ATTR_NAME_RE.match(attr)
        if not parsed:
            return _blank(m)
        name, argument = parsed.groups()
        tag = f"msl:{name}"
        if name in INDEX_ATTRIBUTES and argument:
            n = next(_attr_ids)
            index_typedefs.append(f"typedef char __lint_attr_{n}[({argument}) + 1];")
            tag += f"#{n}"
        annotations.append(f'annotate("{tag}")')
    return "__attribute__((" + ", ".join(annotations) + "))" + "\n" * m.group(0).count("\n")


_COMMENT_RE = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)


def _rewrite(text: str) -> str:
    # Comments out of the way first (string literals are matched so that they stay untouched).
    text = _COMMENT_RE.sub(lambda m: m.group(0) if m.group(0).startswith('"') else _blank(m),
                           text)
    # A function constant has no initialiser in MSL, but `constant` is const for clang.
    text = _FUNC_CONST_RE.sub(lambda m: " = {};" + "\n" * m.group(0).count("\n"), text)
    # `[[buffer(0)]]` and the builtin attributes of kernel parameters become clang annotations (the strict check
    # reads them); the others mean nothing to the lint, and clang rejects some of them where MSL allows them.
    index_typedefs: list[str] = []
    text = _ATTR_RE.sub(lambda m: _annotate(m, index_typedefs), text)
    if index_typedefs:  # after the last line, so every line keeps its number
        text += "\n" + "\n".join(index_typedefs) + "\n"
    # `threadgroup float tile[N];` inside a function is shared storage; clang only allows an
    # address-space-qualified variable with static storage, so make such declarations static (and
    # uninitialised, as threadgroup memory is: no constructor has to run in that address space).
    out, last = [], 0
    for m in _TG_RE.finditer(text):
        before = text[:m.start()].rstrip()
        prev_line = before[before.rfind("\n") + 1:].lstrip()
        if not before or not (before[-1] in "{};" or prev_line.startswith("#")):
            continue  # parameter, cast, template argument, ...
        end = len(text)
        for stop in ";=(),[":
            k = text.find(stop, m.end())
            if k != -1:
                end = min(end, k)
        decl = text[m.end():end]
        if "*" in decl or "&" in decl:
            continue  # pointer or reference declaration: not storage
        out.append(text[last:m.start()])
        out.append("__lint_tg_storage ")
        last = m.start()
    out.append(text[last:])
    return "".join(out)


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def _collect_includes(path: Path, text: str, include_dirs: Sequence[Path],
                      seen: dict[str, str]) -> None:
    """Rewritten copies of the project headers a file includes (recursively): those found next
    to the includer (quoted includes) or in include_dirs. <metal_stdlib> & co. are the prelude's."""
    for kind, name in _INCLUDE_RE.findall(text):
        for d in ([path.parent] if kind == '"' else []) + list(include_dirs):
            cand = (d / name)
            if cand.is_file():
                key = str(cand.resolve())
                if key not in seen:
                    sub = cand.read_text(errors="replace")
                    seen[key] = _rewrite(sub)
                    _collect_includes(cand.resolve(), sub, include_dirs, seen)
                break


# ---------------------------------------------------------------------------------------------
# Classification of clang's diagnostics.

def _pretty(msg: str) -> str:
    msg = _AS_ATTR_RE.sub(lambda m: _AS_NAMES.get(m.group(1), m.group(0)), msg)
    msg = re.sub(r"address space '(\d+)'",
                 lambda m: f"address space '{_AS_NAMES.get(m.group(1), m.group(1))}'", msg)
    msg = msg.replace("generic address space", "thread address space")
    return msg.replace("const constant", "constant")


def _address_spaces(type_spelling: str) -> frozenset:
    return frozenset(_AS_WORD_RE.findall(type_spelling))


def _mentions_as_mismatch(text: str) -> bool:
    """True if the message quotes two types whose address spaces differ."""
    spaces = {_address_spaces(t) for t in _QUOTED_RE.findall(text)
              if any(c in t for c in "*&[") or _AS_WORD_RE.search(t)}
    return len(spaces) > 1


def _expr_type_at(tu, rng) -> str:
    """Type spelling of the expression that exactly covers a diagnostic's source range."""
    want = (rng.start.line, rng.start.column, rng.end.line, rng.end.column)
    stack = [tu.cursor]
    while stack:
        c = stack.pop()
        loc_file = c.location.file
        if loc_file is not None and str(loc_file) != str(rng.start.file):
            continue
        e = c.extent
        if (e.start.line, e.start.column, e.end.line, e.end.column) == want:
            if c.kind.is_expression() and c.type.spelling != "<dependent type>":
                return c.type.spelling
        if e.start.line <= rng.start.line and (e.end.line >= rng.end.line or loc_file is None):
            stack.extend(c.get_children())
    return ""


_CONST_WRITE = ("read-only variable is not assignable", "with const-qualified type",
                "cannot assign to return value", "discards qualifiers", "drops 'const'",
                "drops const")


_IMPLICIT_MEMBER_RE = re.compile(r"\(the implicit (copy|move) (assignment operator|constructor)\)")


def _classify(tu, diag):
    """Returns ("finding" | "error" | None, message)."""
    ci = _clang()
    if diag.severity < ci.Diagnostic.Error:
        return None, ""
    msg = _pretty(diag.spelling)
    notes = [_pretty(n.spelling) for n in diag.children]
    # Clang's C++ cannot copy a struct into or out of a non-default address space (its implicit
    # copy/move members expect generic `this`/arguments); MSL can. Only writing into `constant`
    # is a real error.
    implicit = [n for n in notes if _IMPLICIT_MEMBER_RE.search(n)]
    if implicit and all("address space" in n or "requires" in n for n in notes):
        if any("'this' object is in address space 'constant'" in n for n in implicit):
            return "finding", f"write to the read-only constant address space: {msg}"
        return None, ""
    if any(s in msg for s in _CONST_WRITE):
        lhs = "".join(_pretty(_expr_type_at(tu, r)) for r in diag.ranges)
        if "constant" in lhs or "constant" in msg:
            return "finding", (f"write to the read-only constant address space "
                               f"('{lhs or msg}'): {msg}")
        return "finding", f"write through a const path: {msg}"
    if _mentions_as_mismatch(msg):
        return "finding", f"address-space mismatch: {msg}"
    as_notes = [n for n in notes if _mentions_as_mismatch(n) or "address space" in n]
    if as_notes:
        return "finding", f"address-space mismatch: {msg} ({as_notes[0]})"
    if "address space" in msg and "automatic variable" not in msg:
        return "finding", f"address-space error: {msg}"
    return "error", msg


# ---------------------------------------------------------------------------------------------

def _looks_like_path(x) -> bool:
    if isinstance(x, os.PathLike):
        return True
    return isinstance(x, str) and "\n" not in x and len(x) < 4096 and (
        x.endswith((".metal", ".h", ".hpp")) or os.path.exists(x))


def _read(path_or_source) -> tuple[str, str, Path]:
    """(name findings give the file, its text, where its quoted includes are looked up from)."""
    if _looks_like_path(path_or_source):
        path = Path(path_or_source)
        try:
            text = path.read_text(errors="replace")
        except OSError as e:
            raise LintError(f"{path}: cannot read: {e.strerror or e}") from None
        return str(path), text, path.resolve()
    return "<source>.metal", str(path_or_source), Path.cwd() / "<source>.metal"


def _run(path_or_source, include_dirs: Iterable = ()) -> tuple[list[Finding], list[Finding]]:
    ci = _clang()
    include_dirs = [Path(d).resolve() for d in include_dirs]
    name, text, base = _read(path_or_source)
    headers: dict[str, str] = {}
    _collect_includes(base, text, include_dirs, headers)
    unsaved = [(name, _rewrite(text))] + list(headers.items())
    args = ["-x", "c++", "-std=c++17", "-fsyntax-only", "-nostdinc", "-nostdinc++",
            "-isystem", str(PRELUDE_DIR), "-include", str(PRELUDE_HEADER),
            "-ferror-limit=0", "-Wno-everything", "-D__METAL__=1",
            "-D__METAL_VERSION__=310", "-D__HAVE_BFLOAT__=1", "-DMFA_LINT=1"]
    for d in include_dirs:
        args += ["-I", str(d)]
    try:
        tu = ci.Index.create().parse(name, args=args, unsaved_files=unsaved)
    except ci.TranslationUnitLoadError as e:
        raise LintError(f"{name}: libclang could not parse the file ({e})") from None
    findings, errors, seen = [], [], set()
    for diag in tu.diagnostics:
        kind, msg = _classify(tu, diag)
        if kind is None:
            continue
        loc = diag.location
        fname = str(loc.file) if loc.file is not None else name
        if str(PRELUDE_DIR) in fname:
            # an error inside the prelude is caused by the user's code: point at the user's file
            fname, line = name, 0
        else:
            line = loc.line
        f = Finding(fname, line, msg)
        if (f.file, f.line, f.message) in seen:
            continue
        seen.add((f.file, f.line, f.message))
        (findings if kind == "finding" else errors).append(f)
    return findings, errors


def check(path_or_source, include_dirs: Iterable = ()) -> list[Finding]:
    """Address-space findings for one MSL file (a path) or MSL source text.

    Raises LintError when the input cannot be read or parsed (the message lists clang's errors).
    """
    findings, errors = _run(path_or_source, include_dirs)
    if errors:
        lines = "\n".join(f"  {e.file}:{e.line}: error: {e.message}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise LintError(f"cannot parse as MSL (the lint prelude may lack a declaration, or the "
                        f"code is not valid MSL):\n{lines}{more}")
    return findings


def _expand(paths: Sequence[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.metal")))
        else:
            out.append(p)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mfa_torch.emulator.lint",
        description="Report MSL address-space mismatches (device/constant/threadgroup/thread) "
                    "that g++ cannot see. Exit 0 clean, 1 findings, 2 usage or parse failure.")
    ap.add_argument("paths", nargs="+", metavar="PATH", help=".metal files or directories")
    ap.add_argument("-I", dest="include_dirs", action="append", default=[],
                    metavar="DIR", help="directory searched for #include \"...\"")
    try:
        ns = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    status = 0
    files = _expand(ns.paths)
    if not files:
        print("lint: no .metal files found", file=sys.stderr)
        return 2
    for path in files:
        if not path.is_file():
            print(f"{path}: error: no such file", file=sys.stderr)
            status = 2
            continue
        try:
            findings = check(path, ns.include_dirs)
        except LintError as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            status = 2
            continue
        for f in findings:
            print(f)
        if findings and status == 0:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
