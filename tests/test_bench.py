"""The benchmark (`python -m mfa_torch.bench`): its work formulas against hand-computed numbers, the --quick mode on
this machine (CPU: the reference route) end to end, and the emulator's work counts. Nothing here asserts a time."""
import csv
import itertools
import os
import subprocess
import sys

import pytest
import torch

from mfa_torch import _C
from mfa_torch.bench import cpu_memory, decode, formulas, implementations, kernel_counters, measure, report, run, \
    structured, work
from mfa_torch.bench.__main__ import main
from mfa_torch.bench.cases import AttentionCase

ON_GPU = torch.backends.mps.is_available()
METAL = ON_GPU and _C.has_mps_executor()


# --- formulas -------------------------------------------------------------------------------------------------

def test_attention_flops_by_hand():
    # B=2, H=3, L=S=1024, D=64: 4 * 1024 * 1024 * 64 * 2 * 3 = 1,610,612,736
    assert formulas.attention_forward_flops(2, 3, 1024, 1024, 64, causal=False) == 1_610_612_736
    assert formulas.attention_forward_flops(2, 3, 1024, 1024, 64, causal=True) == 805_306_368
    assert formulas.attention_backward_flops(2, 3, 1024, 1024, 64, causal=False) == 4_026_531_840
    # L != S: 4 * 100 * 300 * 40 = 4,800,000 for one head
    assert formulas.attention_forward_flops(1, 1, 100, 300, 40, causal=False) == 4_800_000


def test_mfa_instruction_counts_by_hand():
    # metal-flash-attention's definitions for one head, N = 1024, D = 64:
    # forward (2D + 5) N^2 = 133 * 1,048,576; backward (3D + 5) N^2 + (4D + 5) N^2 = (197 + 261) * 1,048,576
    assert formulas.attention_forward_instructions(1, 1, 1024, 1024, 64, causal=False) == 139_460_608
    assert formulas.attention_backward_instructions(1, 1, 1024, 1024, 64, causal=False) == 480_247_808
    # per head and per batch element; halved for causal
    assert formulas.attention_forward_instructions(2, 4, 1024, 1024, 64, causal=True) == 4 * 139_460_608
    # MFA: GINSTRS = GFLOPS / 2 up to the softmax's 5 instructions per score, (2D + 5) / 4D at D = 256
    ratio = formulas.attention_forward_instructions(1, 1, 512, 512, 256, False) / \
        formulas.attention_forward_flops(1, 1, 512, 512, 256, False)
    assert ratio == pytest.approx(517 / 1024)


def test_gemm_flops_by_hand():
    assert formulas.gemm_flops(2, 3, 4) == 48
    assert formulas.gemm_flops(256, 256, 256) == 33_554_432


def test_row_blocks_follow_gqa_packing():
    assert formulas.row_block_last_queries(64, 1, 16) == [15, 31, 47, 63]
    # 5 queries x group 2 = 10 packed rows in blocks of 4: rows 0-3 reach query 1, 4-7 query 3, 8-9 query 4
    assert formulas.row_block_last_queries(5, 2, 4) == [1, 3, 4]


def test_minimum_tiles_by_hand():
    last = formulas.row_block_last_queries(64, 1, 16)
    # causal, key blocks of 32: the query blocks ending at 15 and 31 need key block 0; 47 and 63 need 0 and 32
    assert formulas.minimum_tiles(last, 64, 32, causal=True) == 6
    assert formulas.minimum_tiles(last, 64, 32, causal=False) == formulas.dense_tiles(last, 64, 32) == 8


@pytest.mark.parametrize("L, S, group, block_q, block_k", [(150, 150, 1, 16, 64), (150, 260, 2, 32, 16),
                                                           (300, 100, 4, 16, 32), (7, 7, 3, 8, 8)])
def test_minimum_tiles_equals_tiles_touching_the_causal_region(L, S, group, block_q, block_k):
    """Against a brute-force count over the (L, S) upper-left causal mask."""
    allowed = torch.arange(S).view(1, S) <= torch.arange(L).view(L, 1)
    brute = 0
    for row0, key0 in itertools.product(range(0, L * group, block_q), range(0, S, block_k)):
        queries = sorted({r // group for r in range(row0, min(row0 + block_q, L * group))})
        brute += bool(allowed[queries, key0:key0 + block_k].any())
    last = formulas.row_block_last_queries(L, group, block_q)
    assert formulas.minimum_tiles(last, S, block_k, causal=True) == brute


# --- what does not fit is skipped, with the reason --------------------------------------------------------------

def test_skips_what_would_not_fit():
    mps, big = torch.device("mps"), 2**40
    long = AttentionCase(torch.float16, 16384, 128, 8, 8, causal=False)
    assert "pytorch#149261" in implementations.attention_skip_reason("torch", long, False, mps, big)
    assert implementations.attention_skip_reason("mfa_torch", long, True, mps, big) is None
    short = AttentionCase(torch.float16, 4096, 128, 8, 8, causal=False)
    assert implementations.attention_skip_reason("torch", short, False, mps, big) is None
    assert "budget" in implementations.attention_skip_reason("mfa_torch", long, True, mps, 2**20)


def test_markdown_numbers_skip_notes():
    row = {"impl": "torch", "pass": "fwd", "dtype": "float16", "D": 64, "Hq": 8, "Hk": 8, "causal": False,
           "L": 32768, "note": "skipped: too big"}
    measured = dict(row, impl="mfa_torch", median_ms=2.5, tflops=1.0, ginstrs_per_s=500.0, extra_mem_mib=None,
                    note="")
    notes = report.Notes()
    (title, body), = report.attention_sections([measured, row], notes)
    assert title == "Attention fwd, float16"
    assert "| 64 | 8 | 8 | False | 32768 | 2.5 | 1 | 500 | n/a | [1] |" in body
    assert notes.lines() == ["[1] skipped: too big"]


# --- the command, end to end ---------------------------------------------------------------------------------------

def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_the_decode_case_runs_both_paged_implementations_in_one_run(tmp_path):
    """transformers' generate_batch with paged|mfa and paged|sdpa on the same tiny model: the same tokens, both rates
    measured, and a table and CSV that say which is which."""
    rows = decode.rows(torch.device("cpu"), quick=True)
    assert [(r["impl"], r["attn_implementation"]) for r in rows] == [("mfa_torch", "paged|mfa"), ("torch", "paged|sdpa")]
    assert all(r["same_tokens"] is True and r["decode_tokens_per_s"] > 0 and r["new_tokens"] == decode.QUICK_NEW_TOKENS
               for r in rows)
    text = report.write_all(str(tmp_path), [], [], decode_rows=rows)
    assert "| mfa_torch | paged\\|mfa | cpu | 8 |" in text
    columns, written = _read_csv(tmp_path / "decode.csv")
    assert tuple(columns) == decode.COLUMNS and [r["impl"] for r in written] == ["mfa_torch", "torch"]


def test_quick_mode_writes_tables_and_csvs(tmp_path):
    """--quick on this machine with tiny sizes: on a CPU, reference-route times labelled as such."""
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "MFA_TORCH_BACKEND"}
    done = subprocess.run([sys.executable, "-m", "mfa_torch.bench", "--quick", "--sizes", "64,96", "--head-dims", "32",
                           "--dtypes", "float32", "--what", "attention,gemm", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    markdown = (out / "results.md").read_text()
    assert done.stdout.strip() == markdown.strip()
    for section in ("## Attention fwd, float32", "## Attention fwd+bwd, float32", "## GEMM (square, M = N = K)"):
        assert section in markdown
    assert "| D | Hq | Hk | causal | L | mfa_torch ms | mfa_torch TFLOP/s | mfa_torch GINSTRS/s |" in markdown
    assert ("CPU reference-route times, not GPU numbers" in markdown) != ON_GPU

    columns, rows = _read_csv(out / "attention.csv")
    assert tuple(columns) == run.ATTENTION_COLUMNS
    # every implementation x pass x causal x GQA x size, all measured
    assert len(rows) == 2 * 2 * 2 * 2 * 2
    assert {(r["impl"], r["pass"], r["causal"], r["Hk"]) for r in rows} == set(itertools.product(
        ("mfa_torch", "torch"), ("fwd", "fwd+bwd"), ("False", "True"), ("8", "2")))
    assert all(r["note"] == "" and float(r["median_ms"]) > 0 for r in rows)
    assert {r["route"] for r in rows if r["impl"] == "mfa_torch"} == {"metal" if METAL else "reference"}
    for r in rows:  # throughput is the formulas' work over the median time
        flops, instructions = run.attention_work(AttentionCase(torch.float32, int(r["L"]), int(r["D"]), int(r["Hq"]),
                                                               int(r["Hk"]), r["causal"] == "True"),
                                                 r["pass"] == "fwd+bwd")
        seconds = float(r["median_ms"]) / 1e3
        assert float(r["tflops"]) == pytest.approx(flops / seconds / 1e12, rel=1e-4)
        assert float(r["ginstrs_per_s"]) == pytest.approx(instructions / 1e9 / seconds, rel=1e-4)
        assert r["extra_mem_mib"] != ""  # the MPS driver's statistics, or the resident memory on Linux

    columns, rows = _read_csv(out / "gemm.csv")
    assert tuple(columns) == run.GEMM_COLUMNS
    assert {(r["impl"], r["M"]) for r in rows} == set(itertools.product(("mfa_torch", "torch"), ("64", "96")))
    for r in rows:
        assert float(r["gflops"]) == pytest.approx(2 * int(r["M"]) ** 3 / (float(r["median_ms"]) / 1e3) / 1e9,
                                                   rel=1e-4)


def test_cpu_memory_sees_a_calls_peak_and_not_earlier_allocations():
    kept = torch.ones(64 * 2**20, dtype=torch.uint8)  # resident before the call: not the call's
    peak = cpu_memory.extra_memory(lambda: torch.ones(12 * 2**20).sum())  # 48 MiB of float32
    assert 40 * 2**20 <= peak < 56 * 2**20  # resident pages, measured to within a few MiB
    assert cpu_memory.extra_memory(lambda: None) < 4 * 2**20
    del kept


@pytest.mark.skipif(ON_GPU, reason="structured cases compare PyTorch's paths off Apple GPUs")
def test_structured_attention_side_by_side_with_pytorchs_paths(tmp_path):
    """One windowed case (one flex compilation): every implementation and pass, flex's backward marked n/a on a
    CPU, and the ratio to the fastest of PyTorch's paths."""
    case = structured.StructuredCase("window", torch.float32, 256, 16, 2)
    rows = structured.rows([case], torch.device("cpu"), measure.QUICK)
    by = {(r["impl"], r["pass"]): r for r in rows}
    assert set(by) == set(itertools.product(structured.IMPLEMENTATIONS, ("fwd", "fwd+bwd")))
    assert by[("flex", "fwd+bwd")]["note"] == "PyTorch's flex_attention has no backward on cpu"
    measured = [r for key, r in by.items() if key != ("flex", "fwd+bwd")]
    assert all(r["note"] == "" and r["median_ms"] > 0 and r["extra_mem_mib"] is not None for r in measured)
    assert by[("mfa_torch", "fwd")]["route"] == "sdpa-mask"  # below flex's size threshold
    ratios = {r["pass"]: r for r in structured.ratios(rows)}
    fastest = min(by[("torch+mask", "fwd")]["median_ms"], by[("flex", "fwd")]["median_ms"])
    assert ratios["fwd"]["time_vs_fastest_pytorch"] == pytest.approx(by[("mfa_torch", "fwd")]["median_ms"] / fastest)
    text = report.write_all(str(tmp_path), [], [], structured_rows=rows)
    assert "## Structured attention: mfa_torch against PyTorch's paths" in text
    assert (tmp_path / "structured_attention.csv").exists()


# --- the emulator: work, not speed ---------------------------------------------------------------------------

@pytest.mark.emulator
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "dense"])
def test_emulator_kernels_compute_exactly_the_minimum_tiles(causal):
    """The kernels' tile counters against the bench's own count from the plans' block sizes: causal skips every
    tile outside the mask (computed == minimum < dense); without a mask every tile is computed."""
    case = AttentionCase(torch.float32, 150, 32, 4, 2, causal)  # L not a multiple of any block; GQA group 2
    rows = work.work_rows_of(case)
    assert [r["kernel"] for r in rows] == ["attention_forward", "attention_backward_dq", "attention_backward_dkdv"]
    for r in rows:
        assert r["tiles_computed"] == r["tiles_minimum"], r
        assert r["at_minimum"]
        if causal:
            assert r["tiles_minimum"] < r["tiles_dense"], r
        else:
            assert r["tiles_minimum"] == r["tiles_dense"], r


@pytest.mark.emulator
def test_emulator_mode_reports_work_counts(tmp_path, capsys):
    main(["--emulator", "--sizes", "100", "--head-dims", "32", "--dtypes", "float32", "--out", str(tmp_path)])
    markdown = (tmp_path / "results.md").read_text()
    assert "The emulator measures work, not speed" in markdown
    assert "## Work counts under the emulator" in markdown
    assert capsys.readouterr().out.strip() == markdown.strip()
    columns, rows = _read_csv(tmp_path / "attention_work.csv")
    assert tuple(columns) == work.WORK_COLUMNS
    assert len(rows) == 2 * 2 * 3  # (MHA, GQA) x (dense, causal) x three kernels
    assert all(r["at_minimum"] == "True" for r in rows)
    assert not (tmp_path / "attention.csv").exists()  # no times under the emulator
    assert "model_us is a model, not a measurement" in markdown
    columns, rows = _read_csv(tmp_path / "kernel_counters.csv")
    assert tuple(columns) == kernel_counters.CSV_COLUMNS
    kernels = {(r["family"], r["kernel"]) for r in rows}
    for family in ("apple7", "apple9"):
        assert {(family, k) for k in ("attention_forward", "attention_backward_dq", "attention_backward_dkdv", "gemm",
                                      "(all launches)")} <= kernels
    totals = [r for r in rows if r["kernel"] == "(all launches)"]
    assert len(totals) == 2 * 3 and all(float(r["model_us"]) > 0 < float(r["mfa_published_us"]) for r in totals)


def test_full_counter_run_adds_the_feature_cases():
    cases = kernel_counters.attention_cases(False)
    assert set(kernel_counters.FEATURE_CASES) <= set(cases)
    assert {(c.head_dim, c.value_dim) for c in cases if c.sinks} and {576, 512} <= {c.head_dim for c in cases}
    assert not set(kernel_counters.FEATURE_CASES) & set(kernel_counters.attention_cases(False, head_dims=(64,)))


@pytest.mark.emulator
def test_counter_rows_of_a_case_with_sinks_and_two_head_dims():
    """E = 16, Ev = 8, L = S = 128, fp16 on Apple9: whole blocks (16 query rows, 128 keys), so the forward computes
    each 8x8 score tile's E / 8 + Ev / 8 products and nothing else; the backward recomputes S in both kernels and dP
    in both: dQ kernel S, dP, dQ (2 + 1 + 2), dK/dV kernel S, dV, dP, dK (2 + 1 + 1 + 2), of which 8 are needed; and
    D = rowsum(dO * O) takes Ev / 8 products per 8 rows."""
    case = kernel_counters.AttentionCase(torch.float16, 16, 8, 128, heads=1, sinks=True)
    rows = kernel_counters.attention_rows(case, "apple9")
    totals = {r["case"]: r for r in rows if r["kernel"] == "(all launches)"}
    label = "attention float16 E=16 Ev=8 H=1 L=S=128 sinks"
    assert set(totals) == {label + " fwd", label + " bwd"}
    (forward,) = [r for r in rows if r["kernel"] == "attention_forward"]
    assert forward["mma"] == (128 // 8) ** 2 * 3
    # the per-MMA columns divide the launch's own counts
    assert forward["device_bytes_per_mma"] == forward["device_bytes"] / forward["mma"]
    assert forward["tg_bytes_per_mma"] == forward["threadgroup_bytes"] / forward["mma"]
    assert forward["mma_per_barrier"] == forward["mma"] / forward["barriers"]
    assert totals[label + " fwd"]["useful_mma_fraction"] == 1.0
    tiles = (128 // 8) ** 2
    assert totals[label + " bwd"]["useful_mma_fraction"] == pytest.approx(8 * tiles / (11 * tiles + 128 // 8))


@pytest.mark.emulator
def test_decoding_from_pages_costs_only_the_block_table_reads():
    """One query for each of 16 heads on 2 K/V heads, 2048 keys of D = 128 (fp16, Apple9): 8 packed rows per K/V head,
    one 8-row tile against 256 key tiles, E / 8 + Ev / 8 = 32 products each: 16384 MMAs, contiguous or paged. The paged
    forward moves the same K/V bytes (16 per access, the pool's rows allow it) and the same threadgroup bytes, and reads
    4-byte block-table entries, each thread one per page its share of a K or V tile copy enters, plus each thread's
    span (2 ints). A tile's 16 chunks per row go to 16 threads, so the 32 threads take every other row: each enters
    every page of 16 rows the tile covers, 2048 / 16 pages per K/V head, for K and for V."""
    contiguous, paged = (kernel_counters.decode_rows(case, "apple9") for case in kernel_counters.DECODE_CASES)
    forward = [next(r for r in rows if r["kernel"] == "attention_forward") for rows in (contiguous, paged)]
    assert [r["mma"] for r in forward] == [16384, 16384]
    assert [r["useful_mma_fraction"] for rows in (contiguous, paged) for r in rows
            if r["kernel"] == "(all launches)"] == [1.0, 1.0]
    assert forward[0]["threadgroup_bytes"] == forward[1]["threadgroup_bytes"]
    assert "MFA_PAGED_KV=1" in forward[1]["defines"] and "MFA_PAGED_KV=0" in forward[0]["defines"]
    table_reads = 2 * 2 * (2048 // 16) * 32  # K and V, 2 K/V heads, pages per head, threads of a threadgroup
    threads = 32 * forward[1]["threadgroups"]  # one SIMD-group per threadgroup (8 packed rows)
    assert forward[1]["device_bytes"] - forward[0]["device_bytes"] == 4 * table_reads + 4 * 2 * threads


@pytest.mark.emulator
def test_the_block_sparse_case_computes_only_the_attended_blocks():
    """fp16 D = 64 on Apple7's table: 32 query rows per forward block, and keys in blocks of 64, the mask's (the
    table's 128 halved to fit it), so the forward computes exactly the attended 32 x 64 mask blocks:
    (32 / 8) x (64 / 8) tiles x (E + Ev) / 8 products each."""
    case = kernel_counters.AttentionCase(torch.float16, 64, 64, 256, heads=1, block_sparse=True)
    blocks = kernel_counters._block_sparse_mask(256, 1)
    computed = int((blocks.states != -1).sum())
    assert 0 < computed < blocks.states.numel()
    rows = kernel_counters.attention_rows(case, "apple7")
    (forward,) = [r for r in rows if r["kernel"] == "attention_forward"]
    assert forward["defines"].split().count("MFA_BLOCK_K=64") == 1
    assert forward["mma"] == computed * (32 // 8) * (64 // 8) * (64 + 64) // 8
    assert any("block-sparse" in r["case"] for r in rows)
