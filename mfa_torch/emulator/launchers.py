"""C++ launchers: one `extern "C" int msl_kernel_<n>(msl_launch*)` per kernel.

A launcher only says where each parameter comes from; the parameter types are deduced from the kernel
function by the shim (shim/msl/kernel_args.hpp).
"""
import json


def _c_string(text):
    return json.dumps(text)  # a JSON string literal is a valid C string literal for our names and paths


def _binder(param):
    if not param.enabled:
        return "::msl_rt::absent_arg{}"
    if param.attribute == "buffer":
        return f"::msl_rt::buffer_arg{{{param.index}, {_c_string(param.name)}}}"
    if param.attribute == "threadgroup":
        return f"::msl_rt::threadgroup_arg{{{param.index}, {_c_string(param.name)}}}"
    return f"::msl_rt::builtin_arg<::msl_rt::Builtin::{param.attribute}>{{}}"


def launcher_source(kernels):
    lines = ['# 1 "<emulator-launchers>"']
    for n, k in enumerate(kernels):
        binders = "".join(", " + _binder(p) for p in k.params)
        lines.append(f"static void msl_entry_{n}() {{ ::msl_rt::invoke(&{k.function}{binders}); }}")
        lines.append(
            f'extern "C" int msl_kernel_{n}(msl_launch* launch) {{\n'
            f"  static const ::msl_rt::Kernel info{{{_c_string(k.name)}, {{{_c_string(k.file)}, {k.line}}}, &msl_entry_{n}, "
            f"{k.max_threads}u}};\n"
            f"  return ::msl_rt::launch_kernel(*launch, info, &{k.function}{binders});\n}}"
        )
    table = ", ".join(f"&msl_kernel_{n}" for n in range(len(kernels)))
    lines.append(f'extern "C" int (*const msl_kernels[])(msl_launch*) = {{{table or "nullptr"}}};')
    return "\n".join(lines) + "\n"
