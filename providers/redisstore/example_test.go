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
