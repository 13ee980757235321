// The Lua scripts of redis/ (the one copy, the one operators read) compiled into the binary
// with C23's #embed: nothing is read at run time, so a copied binary still has them, and
// clang lists each .lua file among the object's dependencies, so editing one rebuilds this.
#include "CRolloutScripts.h"

#if !defined(__has_embed)
#error "CRolloutScripts needs #embed: clang 19 or later (Swift 6.1 and later toolchains)"
#endif

// #embed is C23; SwiftPM compiles C as gnu11, where clang accepts it as an extension.
#pragma clang diagnostic ignored "-Wc23-extensions"

static const unsigned char operatorChange[] = {
#embed "../../redis/operator_change.lua"
};
CRolloutScripts_Script CRolloutScripts_operatorChange(void) { return (CRolloutScripts_Script){operatorChange, sizeof operatorChange}; }

static const unsigned char applyChange[] = {
#embed "../../redis/apply_change.lua"
};
CRolloutScripts_Script CRolloutScripts_applyChange(void) { return (CRolloutScripts_Script){applyChange, sizeof applyChange}; }

static const unsigned char acknowledgePercent[] = {
#embed "../../redis/acknowledge_percent.lua"
};
CRolloutScripts_Script CRolloutScripts_acknowledgePercent(void) { return (CRolloutScripts_Script){acknowledgePercent, sizeof acknowledgePercent}; }

static const unsigned char recordEvaluation[] = {
#embed "../../redis/record_evaluation.lua"
};
CRolloutScripts_Script CRolloutScripts_recordEvaluation(void) { return (CRolloutScripts_Script){recordEvaluation, sizeof recordEvaluation}; }

static const unsigned char releaseGuard[] = {
#embed "../../redis/release_guard.lua"
};
CRolloutScripts_Script CRolloutScripts_releaseGuard(void) { return (CRolloutScripts_Script){releaseGuard, sizeof releaseGuard}; }

static const unsigned char releaseLock[] = {
#embed "../../redis/release_lock.lua"
};
CRolloutScripts_Script CRolloutScripts_releaseLock(void) { return (CRolloutScripts_Script){releaseLock, sizeof releaseLock}; }
