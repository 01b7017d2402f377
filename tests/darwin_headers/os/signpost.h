// Stand-in for Apple's <os/signpost.h>: the names torch's MPSProfiler.h uses (README.md beside this folder).
#pragma once

#include <stdint.h>
#include <time.h>

typedef uint64_t os_signpost_id_t;
typedef uint8_t os_signpost_type_t;

// Declared by Darwin's <time.h>, which glibc's lacks; MPSProfiler.h calls it in an inline function.
uint64_t clock_gettime_nsec_np(clockid_t clock_id);
