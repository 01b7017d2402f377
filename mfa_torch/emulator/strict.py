"""The strict front end: shader sources checked as Apple's compiler would see them, as far as Linux can tell.

The emulator compiles kernel code with g++ as C++20, which accepts much that Apple's Metal compiler rejects. This
check parses a shader variant (its defines set as a launch plan sets them) with libclang as C++14, the language MSL
3.1/3.2 is based on (clang warns about C++17 features there), against the lint prelude (lint_prelude/), whose builtin
declarations carry the MSL specification's signatures and no more: simdgroup_load/store only through device or
threadgroup pointers to the matrix's element type, min/max of two arguments of one type, scoped mem_flags, only the
precise::/fast:: functions MSL has. Every clang error and warning is a finding, and so are, from the AST:

- kernel signatures: a pointer parameter without an address space, a builtin attribute on a parameter of a type
  MSL does not allow for it, a parameter without a binding or builtin attribute, two parameters with one index;
- C++ that MSL does not have: double, printf, std::, new/delete, goto, virtual, exceptions, thread_local, lambdas,
  recursion, unsuffixed floating literals (1.0 is a double in C++; MSL code writes 1.0f).

Findings print as `file:line: message` for the shipped file (headers under their own name).

    python -m mfa_torch.emulator.strict [PATH [-D NAME=VALUE]...]

without a path checks every variant the planners emit of every shipped shader; exit status 0 clean, 1 findings.
"""
from __future__ import annotations

import argparse
import functools
import re
import tempfile
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from . import lint
from .lint import Finding

_ARGS = ["-std=c++14", "-fsyntax-only", "-nostdinc", "-nostdinc++", "-isystem", str(lint.PRELUDE_DIR),
         "-ferror-limit=0", "-fno-exceptions", "-Wall", "-Wextra",
         "-Wno-unused-parameter", "-D__METAL__=1", "-D__METAL_VERSION__=310", "-D__HAVE_BFLOAT__=1",
         "-DMFA_LINT=1"]

# The types MSL allows for each builtin kernel-parameter attribute (MSL specification, kernel function input
# attributes); const-qualified forms too.
_POSITION = ("ushort", "ushort2", "ushort3", "uint", "uint2", "uint3")
_INDEX = ("ushort", "uint")
BUILTIN_ATTRIBUTE_TYPES = {
    "thread_position_in_grid": _POSITION, "thread_position_in_threadgroup": _POSITION,
    "threadgroup_position_in_grid": _POSITION, "threads_per_threadgroup": _POSITION,
    "threadgroups_per_grid": _POSITION, "threads_per_grid": _POSITION, "dispatch_threads_per_threadgroup": _POSITION,
    "thread_index_in_threadgroup": _INDEX, "thread_index_in_simdgroup": _INDEX,
    "simdgroup_index_in_threadgroup": _INDEX, "simdgroups_per_threadgroup": _INDEX,
    "dispatch_simdgroups_per_threadgroup": _INDEX, "threads_per_simdgroup": _INDEX,
    "thread_execution_width": _INDEX, "thread_index_in_quadgroup": _INDEX, "quadgroup_index_in_threadgroup": _INDEX,
    "quadgroups_per_threadgroup": _INDEX, "dispatch_quadgroups_per_threadgroup": _INDEX,
}
# Attributes that do not bind a parameter by themselves.
_MODIFIERS = ("function_constant",)
# The address spaces a binding attribute's pointer or reference may point into.
_BINDING_SPACES = {"buffer": ("device", "constant"), "threadgroup": ("threadgroup",)}
_AS_RE = re.compile(r"__attribute__\(\(address_space\((\d+)\)\)\)")
_SPACE_NAMES = {"1": "device", "2": "constant", "3": "threadgroup"}


_pch_dir = None


@functools.lru_cache(maxsize=None)
def _prelude_pch() -> str:
    """The prelude precompiled once per process: it is most of what each variant's parse would redo."""
    global _pch_dir
    ci = lint._clang()
    _pch_dir = tempfile.TemporaryDirectory(prefix="mfa_strict_")
    pch = str(Path(_pch_dir.name) / "msl_lint_prelude.pch")
    ci.Index.create().parse(str(lint.PRELUDE_HEADER), args=["-x", "c++-header"] + _ARGS).save(pch)
    return pch


def _defines_args(defines) -> list[str]:
    return [f"-D{name}={value}" for name, value in dict(defines).items()]


def _parse(path_or_source, defines, include_dirs):
    ci = lint._clang()
    name, text, base = lint._read(path_or_source)
    include_dirs = [Path(d).resolve() for d in include_dirs]
    headers: dict[str, str] = {}
    lint._collect_includes(base, text, include_dirs, headers)
    unsaved = [(name, lint._rewrite(text))] + list(headers.items())
    args = ["-x", "c++", "-include-pch", _prelude_pch()] + _ARGS + _defines_args(defines) + [a for d in include_dirs for a in ("-I", str(d))]
    try:
        tu = ci.Index.create().parse(name, args=args, unsaved_files=unsaved)
    except ci.TranslationUnitLoadError as e:
        raise lint.LintError(f"{name}: libclang could not parse the file ({e})") from None
    return tu, {name} | set(headers)


def _in_project(cursor, files) -> bool:
    f = cursor.location.file
    return f is not None and str(f) in files


def _finding(cursor, message) -> Finding:
    return Finding(str(cursor.location.file), cursor.location.line, message)


def _diagnostic_findings(tu, files) -> list[Finding]:
    """clang's errors and warnings, each at the project line that caused it (an error inside the prelude is
    reported where the shader's code instantiated or called it)."""
    ci = lint._clang()
    out = []
    for diag in tu.diagnostics:
        if diag.severity < ci.Diagnostic.Warning:
            continue
        where = [d.location for d in (diag, *diag.children) if d.location.file and str(d.location.file) in files]
        loc = where[0] if where else diag.location
        message = lint._pretty(diag.spelling)
        notes = [lint._pretty(n.spelling) for n in diag.children if "candidate" in n.spelling]
        if notes:
            message += f" ({notes[0]})"
        out.append(Finding(str(loc.file) if loc.file else "<prelude>", loc.line, message))
    return out


def _annotations(cursor) -> list[str]:
    ci = lint._clang()
    return [c.spelling.removeprefix("msl:") for c in cursor.get_children()
            if c.kind == ci.CursorKind.ANNOTATE_ATTR and c.spelling.startswith("msl:")]


def _pointer_space(type_) -> str | None:
    """The address space a pointer or reference type points into ("thread" when none is written)."""
    ci = lint._clang()
    if _type_kind(type_) not in (ci.TypeKind.POINTER, ci.TypeKind.LVALUEREFERENCE, ci.TypeKind.RVALUEREFERENCE):
        return None
    spelled = _AS_RE.search(type_.get_pointee().spelling)
    return _SPACE_NAMES.get(spelled.group(1), spelled.group(1)) if spelled else "thread"


def _kernel_signature_findings(kernel, index_values) -> list[Finding]:
    ci = lint._clang()
    out, bound = [], defaultdict(list)
    for param in (c for c in kernel.get_children() if c.kind == ci.CursorKind.PARM_DECL):
        what = f"kernel {kernel.spelling}: parameter '{param.spelling}'"
        space = _pointer_space(param.type)
        if space == "thread" and _type_kind(param.type) == ci.TypeKind.POINTER:
            out.append(_finding(param, f"{what} is a pointer without an address space (device, constant or "
                                       f"threadgroup)"))
        attributes = [a for a in _annotations(param) if a.split("#")[0] not in _MODIFIERS]
        if not attributes:
            out.append(_finding(param, f"{what} has no [[buffer(n)]], [[threadgroup(n)]] or builtin attribute"))
        for attribute in attributes:
            name, _, ident = attribute.partition("#")
            if name in BUILTIN_ATTRIBUTE_TYPES:
                spelled = param.type.spelling.removeprefix("const ").strip()
                allowed = BUILTIN_ATTRIBUTE_TYPES[name]
                if spelled not in allowed:
                    out.append(_finding(param, f"{what}: [[{name}]] needs one of {', '.join(allowed)}, "
                                               f"not '{spelled}'"))
            elif name in lint.INDEX_ATTRIBUTES and ident:
                index = index_values.get(ident)
                bound[(name, index)].append(param)
                spaces = _BINDING_SPACES.get(name)
                if spaces and space not in spaces:
                    out.append(_finding(param, f"{what}: [[{name}({index})]] needs a pointer or reference into "
                                               f"{' or '.join(spaces)} memory"))
            else:
                out.append(_finding(param, f"{what}: [[{name}]] is not a kernel parameter attribute this check "
                                           f"knows"))
    for (name, index), params in sorted(bound.items(), key=lambda item: str(item[0])):
        if len(params) > 1:
            names = ", ".join(f"'{p.spelling}'" for p in params)
            out.append(_finding(params[1], f"kernel {kernel.spelling}: parameters {names} share [[{name}({index})]]"))
    return out


_DECLS_WITH_TYPE = ("VAR_DECL", "PARM_DECL", "FIELD_DECL", "TYPEDEF_DECL", "TYPE_ALIAS_DECL")
_CASTS = ("CSTYLE_CAST_EXPR", "CXX_FUNCTIONAL_CAST_EXPR", "CXX_STATIC_CAST_EXPR", "CXX_REINTERPRET_CAST_EXPR",
          "CXX_CONST_CAST_EXPR")
# Statements and expressions MSL does not have, by cursor kind.
_FORBIDDEN_KINDS = {
    "LAMBDA_EXPR": "lambda expressions are not MSL",
    "GOTO_STMT": "goto is not MSL", "INDIRECT_GOTO_STMT": "goto is not MSL",
    "CXX_NEW_EXPR": "new is not MSL (no dynamic allocation)", "CXX_DELETE_EXPR": "delete is not MSL",
    "CXX_TRY_STMT": "exceptions (try) are not MSL", "CXX_CATCH_STMT": "exceptions (catch) are not MSL",
    "CXX_THROW_EXPR": "exceptions (throw) are not MSL",
}


def _type_kind(type_):
    try:
        return type_.kind
    except ValueError:  # a kind these Python bindings do not name (half, bfloat): not a double
        return None


def _is_double(type_) -> bool:
    ci = lint._clang()
    refs = (ci.TypeKind.POINTER, ci.TypeKind.LVALUEREFERENCE, ci.TypeKind.RVALUEREFERENCE)
    t = type_.get_canonical()
    while _type_kind(t) in refs + (ci.TypeKind.CONSTANTARRAY, ci.TypeKind.INCOMPLETEARRAY):
        t = t.get_pointee() if _type_kind(t) in refs else t.get_array_element_type()
    return _type_kind(t) in (ci.TypeKind.DOUBLE, ci.TypeKind.LONGDOUBLE)


def _construct_findings(cursor, tu) -> list[Finding]:
    """The forbidden constructs at one cursor."""
    ci = lint._clang()
    kind = cursor.kind.name
    if kind in _FORBIDDEN_KINDS:
        return [_finding(cursor, _FORBIDDEN_KINDS[kind])]
    if kind == "FLOATING_LITERAL":  # double only without a suffix (1.0h is a long double inside its literal operator)
        if _type_kind(cursor.type) != ci.TypeKind.DOUBLE:
            return []
        spelling = "".join(t.spelling for t in tu.get_tokens(extent=cursor.extent))
        if not spelling:  # from a macro defined on the command line
            return [_finding(cursor, "unsuffixed floating literal (from a -D define) is a double in C++: add f or h")]
        return [_finding(cursor, f"unsuffixed floating literal '{spelling}' is a double in C++: write "
                                 f"'{spelling}f' (or '{spelling}h')")]
    if kind in ("NAMESPACE", "NAMESPACE_REF") and cursor.spelling == "std":
        return [_finding(cursor, "std:: is not MSL (the Metal standard library is metal::)")]
    if kind in ("CALL_EXPR", "DECL_REF_EXPR", "FUNCTION_DECL") and cursor.spelling == "printf":
        return [_finding(cursor, "printf is not MSL")]
    if kind in ("CXX_METHOD", "DESTRUCTOR") and cursor.is_virtual_method():
        return [_finding(cursor, f"virtual function '{cursor.spelling}' is not MSL")]
    if kind == "CXX_BASE_SPECIFIER" and any(t.spelling == "virtual" for t in cursor.get_tokens()):
        return [_finding(cursor, "virtual base classes are not MSL")]
    if kind == "VAR_DECL" and cursor.tls_kind != ci.TLSKind.NONE:
        return [_finding(cursor, f"thread_local variable '{cursor.spelling}' is not MSL")]
    double = (kind in _DECLS_WITH_TYPE and _is_double(cursor.type) or kind in _CASTS and _is_double(cursor.type)
              or kind in ("FUNCTION_DECL", "CXX_METHOD") and _is_double(cursor.result_type))
    if double:
        return [_finding(cursor, f"double is not MSL (Apple GPUs have no FP64): '{cursor.spelling or kind}'")]
    return []


def _function_key(cursor):
    ref = cursor.canonical
    return ref.get_usr() or ref.spelling


def _recursion_findings(calls, definitions) -> list[Finding]:
    """Functions that can call themselves (directly or through others), from the calls of each definition."""
    out, state = [], {}

    def visit(key, stack):
        state[key] = "open"
        for callee in calls.get(key, ()):
            if state.get(callee) == "open":
                cycle = stack[stack.index(callee):] + [callee]
                names = " -> ".join(definitions[k].spelling for k in cycle)
                out.append(_finding(definitions[callee], f"recursion is not MSL: {names}"))
            elif callee not in state and callee in definitions:
                visit(callee, stack + [callee])
        state[key] = "done"

    for key in sorted(definitions):
        if key not in state:
            visit(key, [key])
    return out


def _ast_findings(tu, files) -> list[Finding]:
    ci = lint._clang()
    index_values = {}
    for c in tu.cursor.get_children():
        if c.kind == ci.CursorKind.TYPEDEF_DECL and c.spelling.startswith("__lint_attr_"):
            index_values[c.spelling.removeprefix("__lint_attr_")] = c.underlying_typedef_type.get_array_size() - 1
    out, calls, definitions = [], defaultdict(set), {}
    functions = (ci.CursorKind.FUNCTION_DECL, ci.CursorKind.FUNCTION_TEMPLATE, ci.CursorKind.CXX_METHOD)

    def visit(cursor, function):
        if cursor.kind in functions and cursor.is_definition():
            function = _function_key(cursor)
            definitions[function] = cursor
            if "kernel" in _annotations(cursor):
                out.extend(_kernel_signature_findings(cursor, index_values))
        elif cursor.kind == ci.CursorKind.CALL_EXPR and function is not None and cursor.referenced is not None:
            calls[function].add(_function_key(cursor.referenced))
        out.extend(_construct_findings(cursor, tu))
        for child in cursor.get_children():
            visit(child, function)

    for top in tu.cursor.get_children():  # what a project file declares contains only its own code
        if _in_project(top, files):
            visit(top, None)
    return out + _recursion_findings(calls, definitions)


def check(path_or_source, defines=(), include_dirs: Iterable = ()) -> list[Finding]:
    """Findings for one shader (a path, or source text) compiled with `defines` ({name: value} or pairs)."""
    tu, files = _parse(path_or_source, defines, include_dirs)
    findings = _diagnostic_findings(tu, files) + _ast_findings(tu, files)
    return sorted(set(findings), key=lambda f: (f.file, f.line, f.message))


def shipped_variants():
    """(shader path, defines) of every variant the planners emit, one per compiled library, plus each shipped shader
    no plan launches (checked with no defines)."""
    from ..metal.shader_files import shader_dir
    from ..metal.variants import planned_variants
    directory = Path(str(shader_dir()))
    libraries = sorted({(v.shader, v.defines) for v in planned_variants()})
    planned = {shader for shader, _ in libraries}
    unplanned = [(p.name, ()) for p in sorted(directory.glob("*.metal")) if p.name not in planned]
    return [(directory / shader, defines) for shader, defines in libraries + unplanned]


def check_shipped() -> list[Finding]:
    """Findings over every shipped shader variant, each finding once."""
    findings = set()
    for path, defines in shipped_variants():
        findings.update(check(path, defines))
    return sorted(findings, key=lambda f: (f.file, f.line, f.message))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mfa_torch.emulator.strict",
                                 description="Check shader sources as MSL 3.1 (C++14) with Apple's builtin "
                                             "signatures. Exit 0 clean, 1 findings, 2 usage or parse failure.")
    ap.add_argument("path", nargs="?", help="a .metal file (default: every planned variant of the shipped shaders)")
    ap.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("-I", dest="include_dirs", action="append", default=[], metavar="DIR")
    try:
        ns = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        if ns.path is None:
            findings = check_shipped()
        else:
            defines = [d.partition("=")[::2] for d in ns.defines]
            findings = check(Path(ns.path), defines, ns.include_dirs)
    except lint.LintError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in findings:
        print(f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
