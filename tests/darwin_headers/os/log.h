// Stand-in for Apple's <os/log.h>: the one name torch's MPSProfiler.h uses (README.md beside this folder).
#pragma once

typedef struct os_log_s* os_log_t;
