package redisstore_test

import (
	"log"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

// A server's session store in Redis. The example needs a Redis server,
// so it is compiled but not run.
func ExampleNew() {
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	sessions := redisstore.New(client, redisstore.WithCacheTTL(500*time.Millisecond))
	// Pass opt to interceptor.NewServer with the server's other options.
	opt := interceptor.WithSessionStore(sessions)
	_ = opt
}

// A store on a Sentinel deployment whose master has two replicas: a
// revocation succeeds only once both hold it, so that whichever a
// failover promotes keeps it. Compiled but not run.
func ExampleWithReplicaAcks() {
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{"127.0.0.1:26379"},
		Sentinel:    rueidis.SentinelOption{MasterSet: "sessions"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	sessions := redisstore.New(client, redisstore.WithReplicaAcks(2))
	_ = interceptor.WithSessionStore(sessions)
}
