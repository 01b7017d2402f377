"""The doctor's compile check: every shader variant the planners emit, compiled by the route's executor as a launch's
first run would (on a Mac the MPS executor, with its compile options; elsewhere the emulator executor), so a variant
Apple's compiler rejects shows here and not in the middle of a user's model."""
from .. import _C
from ..metal import emulator_executor
from ..metal.shader_files import shader_dir
from ..metal.variants import planned_variants


def _launch(variant):
    launch = _C.Launch()
    launch.shader, launch.kernel, launch.defines = variant.shader, variant.kernel, list(variant.defines)
    return launch


def _compile(route, launch):
    if route == "metal":
        _C.compile_launch_on_mps(launch)
        return
    library = emulator_executor._library(launch, None)  # the executor's own compile and cache
    if launch.kernel not in library.kernel_names:
        raise RuntimeError(f"the compiled library has no kernel {launch.kernel}")


def compile_all(route, log=print):
    """Compiles every planned variant; says how many, or raises naming how many failed and the first. `log` gets the
    full error of every failure and a progress line now and then."""
    variants = planned_variants()
    shader_dir()  # tells the MPS executor where the sources are
    failures = []
    for done, variant in enumerate(variants, 1):
        try:
            _compile(route, _launch(variant))
        except Exception as error:  # noqa: BLE001  (every failure is reported, the others still compiled)
            defines = " ".join(f"{n}={v}" for n, v in variant.defines) or "no defines"
            failures.append(f"{variant.kernel} of {variant.shader} with {defines}")
            log(f"    {failures[-1]} does not compile: {type(error).__name__}: {error}")
        if done % 50 == 0:
            log(f"    {done} of {len(variants)} variants compiled or failed")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(variants)} shader variants do not compile (errors above), "
                           f"first: {failures[0]}")
    return f"{len(variants)} variants"
