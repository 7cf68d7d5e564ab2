-- lib/agg: the account's maintained aggregates (needs lib/int.lua and lib/read.lua).
--
-- So that a gate decision reads a few fields instead of the whole book (issue 16), the
-- HASH `agg` holds, for the limits whose `digest` it names:
--   g:<sym>  worst-case gross exposure of sym: max(|p + b|, |p - s|) x mark x k
--   u:<sym>  unrealized loss of sym at its mark: max(0, cost - p x mark x k)
--   gross = sum of g:*, uloss = sum of u:*, rloss = sum of reservations <sym>:loss
-- Every script that writes a position, a reservation or a mark moves them in the same
-- atomic step (agg_plan before its first write, the returned HSET after). When a script
-- cannot (a symbol with exposure and no mark), it deletes the hash; the gate rebuilds
-- it from the book on its next admission, and on any sign it is stale (another limits
-- digest, or the symbol at hand disagreeing with a recomputation) it ignores it.

-- one symbol's contributions g, u; nil when it has exposure but no mark
-- (|x| and max inline, not math.abs / math.max: each C call costs a few hundred
-- instructions, and this runs three times per gate decision)
local function exposure(p, b, s, m, k, c)
  local w, y = add(p, b), add(p, -s)
  if w < 0 then w = -w end
  if y < 0 then y = -y end
  if y > w then w = y end
  local g, u = 0, 0
  if w > 0 then
    if not m then return nil end
    g = mul(mul(w, m), k)
  end
  if p ~= 0 or c ~= 0 then
    if not m then return nil end
    local un = add(mul(mul(p, m), k), -c)
    if un < 0 then u = -un end
  end
  return g, u
end

-- The agg fields to HSET after writing sym's new state (contributions g, u; the change
-- dr of sym's reserved loss), {} when there are no aggregates to move, or false when
-- they must be dropped (g is nil). Reads only, so call it before the first write.
local function agg_plan(key, sym, g, u, dr)
  local a = rd('HMGET', key, 'digest', 'gross', 'uloss', 'rloss', 'g:' .. sym, 'u:' .. sym)
  if not a[1] then return {} end
  if not g then return false end
  local gross = add(add(stored_nat(a[2], 'agg gross'), -stored_nat(a[5], 'agg g:', sym)), g)
  local uloss = add(add(stored_nat(a[3], 'agg uloss'), -stored_nat(a[6], 'agg u:', sym)), u)
  local rloss = add(stored_nat(a[4], 'agg rloss'), dr)
  if gross < 0 or uloss < 0 or rloss < 0 then return false end
  return {'gross', fmt(gross), 'uloss', fmt(uloss), 'rloss', fmt(rloss),
    'g:' .. sym, fmt(g), 'u:' .. sym, fmt(u)}
end

-- append sym's aggregate fields (g:<sym>, u:<sym>) with contributions g, u to the flat
-- HSET argument list t
local function agg_push(t, sym, g, u)
  t[#t + 1] = 'g:' .. sym
  t[#t + 1] = fmt(g)
  t[#t + 1] = 'u:' .. sym
  t[#t + 1] = fmt(u)
end

-- write a plan from agg_plan (after the script's other writes)
local function agg_apply(key, plan)
  if plan == false then redis.call('DEL', key)
  elseif #plan > 0 then redis.call('HSET', key, unpack(plan)) end
end

-- k (money units per lot per tick) of sym from its stored spec, or nil if unconfigured
local function k_from_spec(si)
  if not si then return nil end
  local kk = string.match(si, '^%d+ %d+ %d+ %d+ (%d+) %d+$')
  local v = kk and #kk <= 16 and kk + 0 -- digits (the pattern): + 0 is tonumber, once
  if not v or v == 0 or v >= MAXI then return nil end
  return v
end
