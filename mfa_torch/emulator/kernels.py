"""Finding the kernels of preprocessed MSL: definitions, and template instantiations named by
[[host_name]]; for each parameter, where its value comes from ([[buffer(i)]], [[threadgroup(i)]] or a
builtin attribute)."""
import dataclasses

from .errors import CompileError

MAX_THREADS_PER_THREADGROUP = 1024
from .tokens import attribute_groups, fail_at, integer_constant, is_attribute_start, matching, split_top_level

BUILTIN_ATTRIBUTES = frozenset(
    """thread_position_in_grid threadgroup_position_in_grid thread_position_in_threadgroup
    threads_per_threadgroup dispatch_threads_per_threadgroup threadgroups_per_grid threads_per_grid
    grid_origin grid_size thread_index_in_threadgroup thread_index_in_simdgroup
    simdgroup_index_in_threadgroup simdgroups_per_threadgroup dispatch_simdgroups_per_threadgroup
    threads_per_simdgroup thread_execution_width thread_index_in_quadgroup
    quadgroup_index_in_threadgroup quadgroups_per_threadgroup""".split()
)

@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    attribute: str  # "buffer", "threadgroup" or a builtin attribute name
    index: int | None  # for buffer / threadgroup
    enabled: bool  # False when a [[function_constant(c)]] condition is false
    device: bool = False  # a buffer in the device address space (else constant); for profile counts


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # the name to dispatch (host_name for template instantiations)
    function: str  # C++ expression naming the function, e.g. gemm<float, 32>
    params: tuple
    file: str
    line: int
    max_threads: int  # [[max_total_threads_per_threadgroup(n)]], else Metal's limit


def _statement_start(tokens, i):
    while i > 0 and tokens[i - 1].text not in (";", "{", "}"):
        i -= 1
    return i


def _kernel_params(tokens, open_paren, constants):
    close = matching(tokens, open_paren)
    params = []
    for part in split_top_level(tokens[open_paren + 1:close]):
        attrs = attribute_groups(part)
        first_attr = next((j for j in range(len(part)) if is_attribute_start(part, j)), len(part))
        names = [t for t in part[:first_attr] if t.kind == "ident"]
        if not names:
            fail_at(part[0], "kernel parameter without a name")
        name = names[-1]
        enabled, binding = True, None
        for attr, args, at in attrs:
            if attr == "function_constant":
                cname = " ".join(t.text for t in args)
                if cname not in constants:
                    fail_at(at, f"{cname} is not a function constant")
                enabled = bool(constants[cname].value)
            elif attr in ("buffer", "threadgroup"):
                binding = (attr, integer_constant(args, attr))
            elif attr in BUILTIN_ATTRIBUTES:
                binding = (attr, None)
            else:
                fail_at(at, f"kernel parameter '{name.text}': attribute [[{attr}]] is not supported by the emulator")
        if binding is None:
            fail_at(name, f"kernel parameter '{name.text}' has no [[buffer(i)]], [[threadgroup(i)]] or builtin attribute")
        device = any(t.text == "device" for t in part[:first_attr])
        params.append(Param(name.text, binding[0], binding[1], enabled, device))
    return tuple(params), close


def _host_name(tokens):
    for attr, args, at in attribute_groups(tokens):
        if attr == "host_name":
            if not args or args[0].kind != "string":
                fail_at(at, "host_name takes a string literal")
            return args[0].text[1:-1]
    return None


def _enclosing_attribute(tokens, start, i):
    """End index of the [[...]] group between tokens[start] and tokens[i] that contains tokens[i], or None."""
    for k in range(start, i):
        if is_attribute_start(tokens, k):
            end = matching(tokens, k)
            if end is not None and k < i < end:
                return end
    return None


def _max_threads(attribute_tokens):
    for attr, args, at in attribute_groups(attribute_tokens):
        if attr == "max_total_threads_per_threadgroup":
            limit = integer_constant(args, attr)
            if not 1 <= limit <= MAX_THREADS_PER_THREADGROUP:
                fail_at(at, f"{attr}({limit}) is outside 1..{MAX_THREADS_PER_THREADGROUP}")
            return limit
    return MAX_THREADS_PER_THREADGROUP


def find_kernels(tokens, constants):
    """Kernel definitions (not templates) and explicit template instantiations with [[host_name]]."""
    definitions, templates, instantiations = [], {}, []
    for i, t in enumerate(tokens):
        if t.text != "kernel" or t.kind != "ident":
            continue
        start = _statement_start(tokens, i)
        in_attribute = _enclosing_attribute(tokens, start, i)  # [[kernel, ...]] rather than the keyword
        j = in_attribute + 1 if in_attribute is not None else i + 1
        head = tokens[start:i]
        if head and head[0].text == "template" and len(head) > 1 and head[1].text == "[":
            instantiations.append((start, i))
            continue
        if j + 2 >= len(tokens) or tokens[j].text != "void" or tokens[j + 1].kind != "ident" or tokens[j + 2].text != "(":
            continue
        name = tokens[j + 1]
        params, close = _kernel_params(tokens, j + 2, constants)
        if close + 1 >= len(tokens) or tokens[close + 1].text != "{":
            continue  # a declaration
        attributes = tokens[start:j]
        is_template = len(head) > 1 and head[0].text == "template" and head[1].text == "<"
        if is_template:
            templates[name.text] = (params, name, _max_threads(attributes))
        else:
            definitions.append(Kernel(_host_name(attributes) or name.text, name.text, params, name.file, name.line,
                                      _max_threads(attributes)))
    kernels = list(definitions)
    for start, i in instantiations:
        end = i
        while tokens[end].text != ";":
            end += 1
        stmt = tokens[start:end]
        host = _host_name(stmt)
        # the function: the last `name<args>` of the statement (after an optional decltype(...))
        k = next(k for k, tok in enumerate(stmt) if tok is tokens[i])
        k += 1
        while k < len(stmt) and (stmt[k].text in ("void", "]", "kernel") or is_attribute_start(stmt, k)):
            k = matching(stmt, k) + 1 if is_attribute_start(stmt, k) else k + 1
        if stmt[k].text == "decltype":
            k = matching(stmt, k + 1) + 1
        if stmt[k].kind != "ident" or k + 1 >= len(stmt) or stmt[k + 1].text != "<":
            fail_at(stmt[0], "cannot parse this kernel template instantiation")
        close = matching(stmt, k + 1)
        function = " ".join(tok.text for tok in stmt[k:close + 1])
        if stmt[k].text not in templates:
            fail_at(stmt[k], f"no kernel template named {stmt[k].text} is defined before this instantiation")
        if host is None:
            fail_at(stmt[0], "a kernel template instantiation needs [[host_name(\"...\")]]")
        params, name, max_threads = templates[stmt[k].text]
        kernels.append(Kernel(host, function, params, name.file, name.line, max_threads))
    seen = set()
    for k in kernels:
        if k.name in seen:
            raise CompileError(f"{k.file}:{k.line}: two kernels are named {k.name!r}")
        seen.add(k.name)
    return kernels
