module github.com/slidejwt/slidejwt/providers/redisstore

go 1.26.0

require (
	github.com/redis/rueidis v1.0.79
	github.com/slidejwt/slidejwt v0.0.0-00010101000000-000000000000
)

require golang.org/x/sys v0.48.0 // indirect

// The core module is not published; go mod tidy ignores go.work, so it
// needs this to resolve the core module from the repository.
replace github.com/slidejwt/slidejwt => ../..
