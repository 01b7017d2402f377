"""A model, not a measurement: the time a kernel launch would take on an Apple GPU, predicted from the emulator's
work counters (mfa_torch/emulator/counters.py) with published machine figures. Every number this module produces is
labelled "model" wherever it is shown; only a Mac running `python -m mfa_torch.bench` measures time.

The launch is taken to be limited by the busiest of three resources of a GPU core, each fully overlapped with the
others (a roofline: real kernels also stall on latency, so the model is optimistic):
- the matrix unit: one 8x8x8 simdgroup_multiply_accumulate takes about 18 cycles of a SIMD-group and a core runs
  4 SIMD-groups' instructions per cycle, so 18 / 4 core-cycles per MMA;
- threadgroup memory: THREADGROUP_BYTES_PER_CYCLE per core (Apple does not publish it; the facts file's estimate
  is 64-128 bytes per cycle, the model takes the low end);
- instruction issue for what the counters see besides MMA: one SIMD instruction per 32 lanes' memory accesses,
  shuffles and reductions (5 instructions each, a butterfly over 32 lanes), conversions, and 4 cycles per exp2 /
  division (transcendentals); 4 instructions per cycle per core. Arithmetic the counters do not see (index math,
  the softmax's adds and multiplies) is left out, which is another reason the model is optimistic.
Device memory is bounded below by the bytes of the buffers the launch touches read once from DRAM.
Sources: philipturner/metal-benchmarks (cycles, schedulers, FMA rate), Apple's specifications (cores, DRAM), the
metal-flash-attention README (clock of M1 Max); shared facts file apple-gpu-performance.md.
"""
import dataclasses

MMA_CYCLES_PER_CORE = 18 / 4
THREADGROUP_BYTES_PER_CYCLE = 64
ISSUE_PER_CYCLE = 4
TRANSCENDENTAL_CYCLES = 4
REDUCTION_INSTRUCTIONS = 5


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    cores: int
    ghz: float
    dram_gb_s: float

    @property
    def nominal_tflops(self):
        return self.cores * 128 * 2 * self.ghz / 1e3  # 128 FMA per core per cycle


# The chip of each family the planners have tables for, as the published figures name them.
CHIPS = {
    "apple7": Chip("M1 Max (32 cores, 1.296 GHz)", 32, 1.296, 400.0),
    "apple9": Chip("M3 Max (40 cores, about 1.39 GHz)", 40, 1.39, 400.0),  # clock from the 14.2 TFLOPS nominal
}


def launch_cycles(launch):
    """{resource: core-cycles summed over the launch} for one launch dict of emulator.profile()."""
    simd_instructions = (launch["device_accesses"] + launch["threadgroup_accesses"] + launch["constant_accesses"]
                         + launch["conversions"]) / 32 + launch["transcendentals"] * TRANSCENDENTAL_CYCLES / 32 \
        + launch["shuffles"] + launch["simd_reductions"] * REDUCTION_INSTRUCTIONS
    return {"mma": launch["mma"] * MMA_CYCLES_PER_CORE,
            "threadgroup": launch["threadgroup_bytes"] / THREADGROUP_BYTES_PER_CYCLE,
            "issue": simd_instructions / ISSUE_PER_CYCLE}


def predicted_microseconds(launches, family, footprint_bytes):
    """Model time of launches run one after the other on the family's chip; footprint_bytes: the bytes of every
    tensor the launches read or write (their DRAM floor)."""
    chip = CHIPS[family]
    cycles = sum(max(launch_cycles(launch).values()) for launch in launches)
    compute = cycles / chip.cores / (chip.ghz * 1e3)
    dram = footprint_bytes / (chip.dram_gb_s * 1e3)
    return max(compute, dram)


def bound_by(launch):
    """The resource the model says limits a launch."""
    cycles = launch_cycles(launch)
    return max(cycles, key=cycles.get)
