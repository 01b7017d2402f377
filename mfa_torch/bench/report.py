"""Results as a markdown document (printed and written), CSV files and, when matplotlib is installed, PNG plots."""
import csv
import os

from . import decode, kernel_counters, run, structured
from .work import WORK_COLUMNS

MEASURES = {  # the markdown columns per implementation, from the row's fields
    "attention": (("ms", "median_ms", "{:.4g}"), ("TFLOP/s", "tflops", "{:.3g}"),
                  ("GINSTRS/s", "ginstrs_per_s", "{:.4g}"), ("MiB", "extra_mem_mib", "{:.1f}")),
    "gemm": (("ms", "median_ms", "{:.4g}"), ("GFLOPS", "gflops", "{:.4g}"), ("MiB", "extra_mem_mib", "{:.1f}")),
    "structured": (("ms", "median_ms", "{:.4g}"), ("MiB", "extra_mem_mib", "{:.1f}")),
}


class Notes:
    """Skip and failure notes, numbered once each, so table cells can say [n] instead of repeating them."""

    def __init__(self):
        self.numbers = {}

    def ref(self, note):
        return f"[{self.numbers.setdefault(note, len(self.numbers) + 1)}]"

    def lines(self):
        return [f"[{n}] {note}" for note, n in self.numbers.items()]


def table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(row, field, fmt, notes):
    if row.get(field) is None:
        if field == "median_ms" and row.get("note"):
            return notes.ref(row["note"])
        return "n/a" if field == "extra_mem_mib" and row.get("median_ms") is not None else ""
    return fmt.format(row[field])


def side_by_side(rows, key_fields, kind, notes):
    """One line per case (key_fields), the implementations' measures next to each other."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    cases = {}
    for r in rows:
        cases.setdefault(tuple(r[f] for f in key_fields), {})[r["impl"]] = r
    columns = list(key_fields) + [f"{impl} {title}" for impl in impls for title, _, _ in MEASURES[kind]]
    body = [list(key) + [_cell(by_impl.get(impl, {}), field, fmt, notes) for impl in impls
                         for _, field, fmt in MEASURES[kind]] for key, by_impl in cases.items()]
    return table(columns, body)


def attention_sections(rows, notes):
    """A table per (pass, dtype)."""
    sections = []
    for group in dict.fromkeys((r["pass"], r["dtype"]) for r in rows):
        selected = [r for r in rows if (r["pass"], r["dtype"]) == group]
        sections.append((f"Attention {group[0]}, {group[1]}",
                         side_by_side(selected, ("D", "Hq", "Hk", "causal", "L"), "attention", notes)))
    return sections


def structured_sections(rows, notes):
    """A table per (pass, dtype), and the ratios to PyTorch's paths."""
    sections = []
    for group in dict.fromkeys((r["pass"], r["dtype"]) for r in rows):
        selected = [r for r in rows if (r["pass"], r["dtype"]) == group]
        sections.append((f"Structured attention {group[0]}, {group[1]} (causal; window {structured.WINDOW}, "
                         f"softcap {structured.SOFTCAP:g}; H={selected[0]['H']}, D={selected[0]['D']})",
                         side_by_side(selected, ("structure", "L"), "structured", notes)))
    if rows:
        fmt = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
        body = [[r["structure"], r["dtype"], r["L"], r["pass"], r["route"], fmt(r["time_vs_fastest_pytorch"]),
                 fmt(r["memory_vs_sdpa_mask"])] for r in structured.ratios(rows)]
        sections.append(("Structured attention: mfa_torch against PyTorch's paths",
                         table(("structure", "dtype", "L", "pass", "mfa_torch route", "time / fastest PyTorch path",
                                "peak memory / SDPA with the mask"), body)))
    return sections


def decode_sections(rows, notes):
    body = [[r["impl"], r["attn_implementation"].replace("|", "\\|"), r["device"], r.get("new_tokens", ""),
             notes.ref(r["note"]) if r.get("note") else f"{r['decode_tokens_per_s']:.1f}", r.get("same_tokens", "")]
            for r in rows]
    return [(f"Decode with continuous batching ({rows[0]['model']}, prompts {rows[0]['prompts']})",
             table(("impl", "attn_implementation", "device", "new tokens", "decode tokens/s", "same tokens"), body))] \
        if rows else []


def gemm_sections(rows, notes):
    return [("GEMM (square, M = N = K)", side_by_side(rows, ("dtype", "M"), "gemm", notes))] if rows else []


def work_sections(rows):
    body = [[_format_work(r[c]) for c in WORK_COLUMNS] for r in rows]
    return [("Work counts under the emulator (key/value tiles)", table(WORK_COLUMNS, body))] if rows else []


def counter_sections(rows):
    body = [[_format_work(r.get(c, "")) for c in kernel_counters.COUNTER_COLUMNS] for r in rows]
    return [("Work counters under the emulator, and the model's time (model, not measured)",
             table(kernel_counters.COUNTER_COLUMNS, body))] if rows else []


def _format_work(value):
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else value


def document(header, explanations, sections, notes):
    lines = ["# mfa_torch benchmark", ""] + [f"- {key}: {value}" for key, value in header] + [""]
    for paragraph in explanations:
        lines += [paragraph, ""]
    for title, body in sections:
        lines += [f"## {title}", "", body, ""]
    if notes.lines():
        lines += ["## Notes", ""] + [f"- {line}" for line in notes.lines()] + [""]
    return "\n".join(lines)


def _csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c, "")) for c in columns})


def write_plots(out_dir, attention_rows, gemm_rows):
    """PNG plots (throughput against size, an implementation per line) when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for pass_, dtype in dict.fromkeys((r["pass"], r["dtype"]) for r in attention_rows):
        rows = [r for r in attention_rows if (r["pass"], r["dtype"]) == (pass_, dtype)]
        _plot(plt, rows, panel=lambda r: f"D={r['D']} heads {r['Hq']}/{r['Hk']}",
              series=lambda r: r["impl"] + (" causal" if r["causal"] else ""), x="L", y="tflops",
              axis_labels=("L = S", "TFLOP/s"), title=f"attention {pass_}, {dtype}",
              path=os.path.join(out_dir, f"attention_{pass_.replace('+', '_')}_{dtype}.png"))
    if gemm_rows:
        _plot(plt, gemm_rows, panel=lambda r: r["dtype"], series=lambda r: r["impl"], x="M", y="gflops",
              axis_labels=("M = N = K", "GFLOPS"), title="GEMM, square", path=os.path.join(out_dir, "gemm.png"))


def _plot(plt, rows, *, panel, series, x, y, axis_labels, title, path):
    """One panel per panel(row), one line per series(row): y against x on a log2 axis. Skipped cases have no y."""
    panels = list(dict.fromkeys(panel(r) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, name in zip(axes[0], panels):
        measured = [r for r in rows if panel(r) == name and r.get(y) is not None]
        for line in dict.fromkeys(series(r) for r in measured):
            ax.plot(*zip(*[(r[x], r[y]) for r in measured if series(r) == line]), marker="o", label=line)
        ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel=axis_labels[0], ylabel=axis_labels[1])
        if measured:  # a panel whose cases were all skipped has no lines to name
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out_dir, header, explanations, attention_rows=(), gemm_rows=(), work_rows=(), structured_rows=(),
              counter_rows=(), decode_rows=()):
    """Writes results.md, the CSVs and plots into out_dir; returns the markdown text."""
    os.makedirs(out_dir, exist_ok=True)
    notes = Notes()
    sections = attention_sections(attention_rows, notes) + structured_sections(structured_rows, notes) + \
        gemm_sections(gemm_rows, notes) + decode_sections(decode_rows, notes) + work_sections(work_rows) + \
        counter_sections(counter_rows)
    text = document(header, explanations, sections, notes)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    if attention_rows:
        write_csv(os.path.join(out_dir, "attention.csv"), run.ATTENTION_COLUMNS, attention_rows)
    if gemm_rows:
        write_csv(os.path.join(out_dir, "gemm.csv"), run.GEMM_COLUMNS, gemm_rows)
    if work_rows:
        write_csv(os.path.join(out_dir, "attention_work.csv"), WORK_COLUMNS, work_rows)
    if counter_rows:
        write_csv(os.path.join(out_dir, "kernel_counters.csv"), kernel_counters.CSV_COLUMNS, counter_rows)
    if structured_rows:
        write_csv(os.path.join(out_dir, "structured_attention.csv"), structured.COLUMNS, structured_rows)
    if decode_rows:
        write_csv(os.path.join(out_dir, "decode.csv"), decode.COLUMNS, decode_rows)
    write_plots(out_dir, attention_rows, gemm_rows)
    return text
