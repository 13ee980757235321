#ifndef CROLLOUT_SCRIPTS_H
#define CROLLOUT_SCRIPTS_H

#include <stddef.h>

/// One Lua script of redis/, as compiled into the binary: its bytes (no NUL at the end) and
/// their count.
typedef struct {
    const unsigned char *_Nonnull bytes;
    size_t count;
} CRolloutScripts_Script;

CRolloutScripts_Script CRolloutScripts_operatorChange(void);
CRolloutScripts_Script CRolloutScripts_applyChange(void);
CRolloutScripts_Script CRolloutScripts_acknowledgePercent(void);
CRolloutScripts_Script CRolloutScripts_recordEvaluation(void);
CRolloutScripts_Script CRolloutScripts_releaseGuard(void);
CRolloutScripts_Script CRolloutScripts_releaseLock(void);

#endif
