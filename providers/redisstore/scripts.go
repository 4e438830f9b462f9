package redisstore

import (
	"crypto/sha1"
	"encoding/hex"

	"github.com/redis/rueidis"
)

// The fields of a session's hash. Digests and the sealed successor are
// stored as raw bytes; times as decimal Unix milliseconds from the server.
//
//	cur    digest of the current refresh token
//	prev   digest of the previous one (absent until the first rotation)
//	succ   sealed successor handed out again on a replay
//	grace  end of prev's grace period
//	rev    "1" once the session is revoked
//	keep   keep-until; the hash expires then (PEXPIREAT)
//
// Every script treats a hash whose keep is before now as absent and
// deletes it: the server's now decides, not Redis's clock. Times stay
// strings in Lua (compared with tonumber, written back as given), so no
// number is ever formatted by Lua.

// createScript: KEYS[1] the session; ARGV refresh, keepUntil.
var createScript = newScript(`
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'cur', ARGV[1], 'keep', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`)

// rotateScript: KEYS[1] the session; ARGV presented, next, successor, now,
// graceUntil, keepUntil. Returns {outcome} or {outcome, successor}, with
// the outcomes numbered as store.Outcome.
var rotateScript = newScript(`
local k = KEYS[1]
local now = tonumber(ARGV[4])
local s = redis.call('HMGET', k, 'cur', 'prev', 'grace', 'rev', 'keep', 'succ')
if not s[1] or not s[5] then return {5} end
if tonumber(s[5]) < now then
  redis.call('DEL', k)
  return {5}
end
if s[4] == '1' then return {4} end
if s[1] == ARGV[1] then
  local keep = ARGV[6]
  if tonumber(s[5]) > tonumber(keep) then keep = s[5] end
  redis.call('HSET', k, 'cur', ARGV[2], 'prev', ARGV[1], 'succ', ARGV[3], 'grace', ARGV[5], 'keep', keep)
  redis.call('PEXPIREAT', k, keep)
  return {1}
end
if s[2] and s[2] == ARGV[1] and s[3] and now < tonumber(s[3]) and s[6] then
  return {2, s[6]}
end
redis.call('HSET', k, 'rev', '1')
redis.call('HDEL', k, 'succ')
return {3}
`)

// revokeScript: KEYS[1] the session; ARGV now, keepUntil. An unknown
// session records nothing: it is refused already. The mark is kept until
// the later of the record's keep-until and the one given.
var revokeScript = newScript(`
local k = KEYS[1]
local keep = redis.call('HGET', k, 'keep')
if not keep then return 0 end
if tonumber(keep) < tonumber(ARGV[1]) then
  redis.call('DEL', k)
  return 0
end
if tonumber(ARGV[2]) > tonumber(keep) then keep = ARGV[2] end
redis.call('HSET', k, 'rev', '1', 'keep', keep)
redis.call('HDEL', k, 'succ')
redis.call('PEXPIREAT', k, keep)
return 1
`)

// A script is a Lua script of the store. Exec (rueidis's) sends it alone:
// EVALSHA, then EVAL once after a NOSCRIPT. evalsha and eval build the
// same commands for a caller that pipelines the script with another
// command on one connection, and handles NOSCRIPT itself.
type script struct {
	*rueidis.Lua
	src, sha string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src)) // the script's name in Redis, as rueidis computes it
	return &script{Lua: rueidis.NewLuaScript(src), src: src, sha: hex.EncodeToString(sum[:])}
}

func (sc *script) evalsha(b rueidis.Builder, keys, args []string) rueidis.Completed {
	return b.Evalsha().Sha1(sc.sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

func (sc *script) eval(b rueidis.Builder, keys, args []string) rueidis.Completed {
	return b.Eval().Script(sc.src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}
