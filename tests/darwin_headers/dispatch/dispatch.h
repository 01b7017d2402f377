// Stand-in for Apple's <dispatch/dispatch.h>: the one name torch's MPSStream.h uses (README.md beside this folder).
#pragma once

typedef struct dispatch_queue_s* dispatch_queue_t;
