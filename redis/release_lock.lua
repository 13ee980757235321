-- rollout-gate: release a lock only if we still own it (redis/release_lock.lua).
-- KEYS: the lock, then optionally flags:<f>:last_verdict.
-- ARGV: the owner token written by SET NX PX, then (with the second key) the verdict to
--       record, `<result> <time> <reason>`.
-- Returns 1 when released, 0 when the lock is not ours (then nothing is written). The verdict
-- is written only while the lock is ours, in the same step as its release; a last_verdict of
-- another type than string is left as it is (nothing is written over it).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if KEYS[2] then
    local found = redis.call('TYPE', KEYS[2])['ok']
    if found == 'none' or found == 'string' then
      redis.call('SET', KEYS[2], ARGV[2])
    end
  end
  return redis.call('DEL', KEYS[1])
end
return 0
