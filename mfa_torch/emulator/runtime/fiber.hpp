// Cooperative fibers: one per emulated GPU thread, switched by hand-written x86-64 code.
// swapcontext() makes a signal-mask syscall per switch (~20x slower); we only need the
// callee-saved registers and the floating-point control words of the System V ABI.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" __attribute__((visibility("hidden"))) void msl_fiber_switch(void** save_sp, void* resume_sp);

#if defined(MSL_RUNTIME_DEFINITIONS)
asm(R"(
    .pushsection .text
    .globl msl_fiber_switch
    .hidden msl_fiber_switch
    .type msl_fiber_switch,@function
msl_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size msl_fiber_switch,.-msl_fiber_switch
    .popsection
)");
#endif

namespace msl_rt {

// Builds the initial frame so that the first msl_fiber_switch into `stack_top` "returns" into entry().
inline void* fiber_initial_sp(char* stack_top, void (*entry)()) {
  void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack_top) & ~uintptr_t(15));
  *--sp = nullptr;                        // fake return address of entry(): keeps the ABI's 16-byte alignment
  *--sp = reinterpret_cast<void*>(entry);  // popped by `ret`
  for (int reg = 0; reg < 6; reg++) *--sp = nullptr;  // rbp rbx r12-r15
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  *--sp = *reinterpret_cast<void**>(control);
  return sp;
}

}  // namespace msl_rt
