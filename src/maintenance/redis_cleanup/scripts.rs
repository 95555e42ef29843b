//! The three Lua scripts of a `redis_cleanup` run, each run on one SCAN
//! page or one batch, so that a check and what depends on it happen in
//! one atomic step on the server:
//! - [`PLAN`]: which keys of a page pass the filters, with a 64-bit
//!   fingerprint of each one's value (the first 16 hex digits of the SHA-1
//!   of its `DUMP`) and, for sampled pages, its `MEMORY USAGE`;
//! - [`DUMP`]: each key's `DUMP` and `PTTL`, if its value is still the one
//!   the plan saw (and it is still idle enough), up to a byte cap per call;
//! - [`REMOVE`]: `UNLINK` of each key whose value is still the one dumped
//!   and whose having an expiry did not change since.
//!
//! The filters run before anything that touches a key (`TYPE`, `PTTL` and
//! `OBJECT IDLETIME` leave the key's access time alone; `DUMP` does not).

/// KEYS: a SCAN page. ARGV: types (comma-separated, empty: any),
/// without_ttl (1/0), idle seconds at least (−1: any), larger than bytes
/// (−1: any), fingerprint (1/0: without one, when the idle filter is on and
/// a `DUMP` would reset idle times), sample sizes (1/0).
/// Returns per key: 0 (filtered out) or {fingerprint, memory usage or −1}.
pub const PLAN: &str = r#"
local types, no_ttl, idle = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local larger, fp, sample = tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6] == '1'
local out = {}
for i, k in ipairs(KEYS) do
  local r = 0
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and (types == '' or string.find(',' .. types .. ',', ',' .. t .. ',', 1, true)) then
    local ok = true
    if no_ttl and redis.call('PTTL', k) ~= -1 then ok = false end
    if ok and idle >= 0 and redis.call('OBJECT', 'IDLETIME', k) < idle then ok = false end
    local mem = -1
    if ok and (larger >= 0 or sample) then
      mem = redis.call('MEMORY', 'USAGE', k) or 0
      if larger >= 0 and mem <= larger then ok = false end
    end
    if ok then
      local f = ''
      if fp then f = string.sub(redis.sha1hex(redis.call('DUMP', k)), 1, 16) end
      r = {f, mem}
    end
  end
  out[i] = r
end
return out
"#;

/// KEYS: keys of a batch. ARGV: idle seconds at least (−1: any), byte cap,
/// want dumps (1/0), then one plan fingerprint per key ('' : none).
/// Stops once the dumps reach the cap, before dumping the next key (a
/// dumped key's access time is reset, so it is never dumped twice). Returns per key handled: 0 (vanished), 1 (value
/// changed since the plan), 2 (used since the plan: no longer idle), or
/// {fingerprint, pttl, dump or ''}.
pub const DUMP: &str = r#"
local idle, cap, want = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local out, total = {}, 0
for i, k in ipairs(KEYS) do
  if want and total >= cap then break end
  if redis.call('EXISTS', k) == 0 then
    out[i] = 0
  elseif idle >= 0 and redis.call('OBJECT', 'IDLETIME', k) < idle then
    out[i] = 2
  else
    local d = redis.call('DUMP', k)
    local f = string.sub(redis.sha1hex(d), 1, 16)
    local planned = ARGV[3 + i]
    if planned ~= '' and planned ~= f then
      out[i] = 1
    else
      total = total + #d
      if not want then d = '' end
      out[i] = {f, redis.call('PTTL', k), d}
    end
  end
end
return out
"#;

/// KEYS: keys dumped for a batch. ARGV: per key its fingerprint and
/// whether it had an expiry (1/0). Returns per key: 1 (unlinked),
/// 0 (vanished), 2 (value changed), 3 (expiry set or removed).
pub const REMOVE: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local d = redis.call('DUMP', k)
  if not d then
    out[i] = 0
  elseif string.sub(redis.sha1hex(d), 1, 16) ~= ARGV[2 * i - 1] then
    out[i] = 2
  elseif (redis.call('PTTL', k) ~= -1) ~= (ARGV[2 * i] == '1') then
    out[i] = 3
  else
    redis.call('UNLINK', k)
    out[i] = 1
  end
end
return out
"#;
