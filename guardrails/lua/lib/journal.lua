-- lib/journal: the account's append-only journal and its cap.
--
-- journal_add(key, field, value, ...) appends one entry (redis.call: raises on a key of
-- the wrong type, so call it only after the key's shape was checked, or first);
-- journal_try(...) is the same through redis.pcall, for entries that must never abort
-- the script (denials, refusals). JOURNAL_CAP is the approximate MAXLEN.
local JOURNAL_CAP = '100000'

local function journal_add(key, ...)
  return redis.call('XADD', key, 'MAXLEN', '~', JOURNAL_CAP, '*', ...)
end

local function journal_try(key, ...)
  return redis.pcall('XADD', key, 'MAXLEN', '~', JOURNAL_CAP, '*', ...)
end
