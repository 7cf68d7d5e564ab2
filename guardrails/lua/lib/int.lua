-- lib/int: exact integers in a Lua double — the ONE definition of a stored integer.
--
-- A stored integer is the text '^-?%d+$' with |n| < 2^53 (no '0x64', ' 100', '1e3',
-- '+1', '1.0'); every field a script reads as a number goes through stored_int, so the
-- gate and the ledger agree on what a malformed field is. Failures raise {bad = detail}:
-- the including script maps them to its bad-state outcome, writing nothing.
local MAXI = 9007199254740992 -- 2^53: integers at or above it are not exact in a double
-- the library functions the hot helpers call, as locals (upvalues, not global lookups)
local s_find = string.find

local function fmt(n) return string.format('%d', n) end

local function bad(detail) error({bad = detail}) end

-- a stored integer field (absent = 0); the field is named what .. (more or '') in the
-- failure (two parts, so a hot loop does not build the name when nothing fails).
-- v is what a read returned: a string, or false / nil for an absent field. Anything else
-- is the calling script's own mistake and raises a Lua error (the script's failure, not a
-- stored state's): no type() test on this hot path (a C call, ~700 instructions).
local function stored_int(v, what, more)
  if not v then return 0 end
  -- (find, not match: no capture string is made for a check; then + 0, not tonumber:
  -- Lua 5.1's tonumber converts a string twice, arithmetic once, and on digits the two
  -- agree; + 0 also turns a stored "-0" into 0)
  local n = #v <= 17 and s_find(v, '^-?%d+$') and v + 0
  if not n or n >= MAXI or n <= -MAXI then
    bad(what .. (more or '') .. ' is not an integer: ' .. tostring(v))
  end
  return n
end

-- a stored integer that must be >= 0 (absent = 0)
local function stored_nat(v, what, more)
  local n = stored_int(v, what, more)
  if n < 0 then bad(what .. (more or '') .. ' is negative: ' .. v) end
  return n
end

-- an argument: a non-negative integer below 2^53, or nil
local function arg_int(v)
  if type(v) ~= 'string' or #v > 16 or not string.match(v, '^%d+$') then return nil end
  local n = tonumber(v)
  if not n or n >= MAXI then return nil end
  return n
end

-- checked arithmetic: a result at or past 2^53 raises {overflow = true}
local function chk(n)
  if n >= MAXI or n <= -MAXI then error({overflow = true}) end
  return n
end
local function mul(a, b) return chk(a * b) end
local function add(a, b) return chk(a + b) end

-- exact floor / ceil of a / b for integers (b > 0), safe against double rounding
local function ifloor(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end
local function iceil(a, b) return -ifloor(-a, b) end

-- the detail of a failure raised by these helpers (or a redis.call error table), or nil
-- for anything else (a programming error: re-raise it)
local function failure_detail(e)
  if type(e) ~= 'table' then return nil end
  if e.bad then return e.bad end
  if e.err then return e.err end
  if e.overflow then return 'stored totals overflow the exact integer range' end
  return nil
end
