package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/redis/rueidis"
	"google.golang.org/grpc"

	"github.com/slidejwt/slidejwt/providers/redisstore"
)

// openRedis connects to the Redis of --redis and returns the session
// store on it and a function that closes the client. Its errors never
// quote a password.
func openRedis(opt *rueidis.ClientOption) (*redisstore.Store, func(), error) {
	client, err := rueidis.NewClient(*opt)
	if err != nil {
		msg := strings.Join(strings.Fields(err.Error()), " ")
		if pw := opt.Password; pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		return nil, nil, fmt.Errorf("--redis: cannot connect to %s: %s", strings.Join(opt.InitAddress, ","), msg)
	}
	return redisstore.New(client), client.Close, nil
}

// serve serves srv on lis, and hs on hlis if hs is not nil, until ctx is
// done or one of them fails, then stops both, gracefully for at most 5 s.
func serve(ctx context.Context, log *slog.Logger, srv *grpc.Server, lis net.Listener, hs *http.Server, hlis net.Listener) error {
	done := make(chan error, 2)
	go func() { done <- srv.Serve(lis) }()
	if hs != nil {
		go func() {
			if err := hs.ServeTLS(hlis, "", ""); !errors.Is(err, http.ErrServerClosed) {
				done <- err
			}
		}()
	}
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if hs != nil {
		_ = hs.Shutdown(stopCtx)
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-stopCtx.Done():
		srv.Stop()
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
