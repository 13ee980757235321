#ifndef C_ROLLOUT_SYNC_H
#define C_ROLLOUT_SYNC_H

// What the gate's lock-free snapshot needs from the system and Swift cannot express:
// membarrier(2) (syscall() is variadic, so Swift cannot call it), a compiler barrier, and
// atomic adds on raw memory (Synchronization's Atomic lives only in stored properties).
#include <stdint.h>

/// Registers the process for MEMBARRIER_CMD_PRIVATE_EXPEDITED; 0 when it is available
/// (Linux 4.14+), -1 otherwise (then readers fall back to a full fence of their own).
int CRolloutSync_membarrier_register(void);

/// Issues a full memory barrier on every running thread of the process; 0 on success.
int CRolloutSync_membarrier(void);

/// Stops the compiler from moving memory accesses across this point; emits no instruction.
static inline void CRolloutSync_compiler_barrier(void) { __asm__ __volatile__("" ::: "memory"); }

/// Adds `amount` to `*cell` atomically, with no ordering (a counter).
static inline void CRolloutSync_add(uint64_t *cell, uint64_t amount) { __atomic_fetch_add(cell, amount, __ATOMIC_RELAXED); }

/// Adds `amount` to a cell only the calling thread writes: a load and a store, no locked
/// instruction (other threads may read it meanwhile and see the old or the new value).
static inline void CRolloutSync_add_owned(uint64_t *cell, uint64_t amount) {
    __atomic_store_n(cell, __atomic_load_n(cell, __ATOMIC_RELAXED) + amount, __ATOMIC_RELAXED);
}

/// Reads `*cell` with no ordering (never a torn value).
static inline uint64_t CRolloutSync_load(uint64_t *cell) { return __atomic_load_n(cell, __ATOMIC_RELAXED); }

#endif
