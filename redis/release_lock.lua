-- rollout-gate: release a lock only if we still own it (redis/release_lock.lua).
-- KEYS: the lock. ARGV: the owner token written by SET NX PX.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
