-- lib/tomb: the tombstones of pruned intents (docs/keys.md, tomb).
--
-- An intent id's sha1 hex h names bucket h[1..3] (4096 buckets, fields of the tomb
-- HASH) and fingerprint h[4..15] packed into 6 bytes; a bucket's value is its
-- fingerprints concatenated. 60 bits in all: a new intent id collides with one of n
-- tombstones with probability n / 2^60 (and is then refused, never wrongly admitted).
-- tomb_of(id) -> bucket, fingerprint; tomb_has(blob, fp, bucket) -> true when fp is one
-- of the 6-byte entries of blob (a match must start on an entry boundary);
-- tomb_whole(blob, bucket) raises {bad = ...} (lib/int.lua) unless blob (nil: absent) is
-- whole entries — a stray or missing byte shifts every entry after it off its boundary,
-- so a pruned id would no longer be found: tomb_has checks it too, so the gate denies
-- bad_state and the sweep writes nothing, never treating such a bucket as empty.
local function tomb_of(id)
  local h = redis.sha1hex(id)
  -- 12 hex digits = 48 bits, exact in a double; packed big-endian (struct, in Redis's Lua)
  local fp = struct.pack('>I6', tonumber(string.sub(h, 4, 15), 16))
  return string.sub(h, 1, 3), fp
end

local function tomb_whole(blob, bucket)
  if blob and #blob % 6 ~= 0 then
    bad('tomb bucket ' .. bucket .. ' is ' .. #blob .. ' bytes, not whole 6-byte entries')
  end
end

local function tomb_has(blob, fp, bucket)
  if not blob then return false end
  tomb_whole(blob, bucket)
  local i = 1
  while true do
    local s = string.find(blob, fp, i, true)
    if not s then return false end
    if (s - 1) % 6 == 0 then return true end
    i = s + 1
  end
end
