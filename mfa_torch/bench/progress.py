"""A progress indicator for long sweeps, on stderr: tqdm's bar when tqdm is installed and stderr is a terminal, else
one line per step (readable in logs)."""
import sys


def progress(items, description, label):
    """Yields items while showing which one runs (label(item)) and how far the sweep has come."""
    items = list(items)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and sys.stderr.isatty():
        bar = tqdm(items, desc=description, file=sys.stderr, leave=False)
        for item in bar:
            bar.set_postfix_str(label(item))
            yield item
        return
    for i, item in enumerate(items, 1):
        print(f"[{description} {i}/{len(items)}] {label(item)}", file=sys.stderr, flush=True)
        yield item
