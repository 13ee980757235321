// hiredis 0.14 (Debian libhiredis-dev). pkg-config is left off on purpose: Debian's
// hiredis.pc adds -D_FILE_OFFSET_BITS=64, which SwiftPM rejects with a warning.
#include <sys/time.h>
#include <hiredis/hiredis.h>
