package redisstore

import (
	"testing"

	"github.com/slidejwt/slidejwt/internal/redistest"
)

// A starter starts the server of one test: startRedis or startValkey.
type starter func(testing.TB) *redisServer

// contract is the suite every server the store supports must pass: the
// store's contract (interceptor/store), the key layout, the client-side
// cache and failing closed. TestRedis runs it on redis-server, TestValkey
// on valkey-server; each case starts a server of its own.
var contract = []struct {
	name string
	run  func(*testing.T, starter)
}{
	{"RotateOutcomes", testRotateOutcomes},
	{"SuccessorIsTheStoredCopy", testSuccessorIsTheStoredCopy},
	{"IsRevoked", testIsRevoked},
	{"RevokeUnknown", testRevokeUnknown},
	{"ConcurrentRotate", testConcurrentRotate},
	{"ConcurrentUse", testConcurrentUse},
	{"KeysExpireAtKeepUntil", testKeysExpireAtKeepUntil},
	{"FlushAllDoesNotRevive", testFlushAllDoesNotRevive},
	{"IsRevokedFromMemory", testIsRevokedFromMemory},
	{"FailsClosed", testFailsClosed},
}

func runContract(t *testing.T, start starter) {
	for _, tc := range contract {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, start) })
	}
}

// TestRedis runs the contract suite on redis-server from PATH (skipped
// without it, failing under CI).
func TestRedis(t *testing.T) {
	redistest.Binary(t, "redis-server", "Debian: apt-get install -y redis-server")
	runContract(t, startRedis)
}

// TestValkey runs the contract suite on valkey-server from PATH. Without
// it the test is skipped even when CI is set: CI runs on Debian 12, which
// has no valkey package, so the Valkey run happens only where Valkey is
// installed (the package doc says so).
func TestValkey(t *testing.T) {
	redistest.OptionalBinary(t, "valkey-server", "Debian 12 has no valkey package; install Valkey 7.2+ to run these tests")
	runContract(t, startValkey)
}
