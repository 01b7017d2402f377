"""A per-thread setting that a `with` block sets and then restores."""
import contextlib


@contextlib.contextmanager
def thread_setting(local, name, value):
    """Set attribute `name` of the threading.local `local` to `value` inside the block; the previous value (None when
    unset) comes back after it, also on an exception."""
    previous = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)
