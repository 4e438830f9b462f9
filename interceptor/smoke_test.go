package interceptor

import (
	"context"
	"testing"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

func TestSmoke_UnaryRenewal(t *testing.T) {
	e := newEnv(t, envConfig{})
	s := e.startSession(t, map[string]any{"role": "admin"})
	client, h := e.holderClient(t, s.AccessToken)
	ctx := context.Background()
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if h.Token() != s.AccessToken {
		t.Fatalf("renewed too early")
	}
	e.clock.Advance(13 * time.Hour)
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if h.Token() == s.AccessToken {
		t.Fatalf("not renewed")
	}
	if got, want := h.Expiry(), t0.Add(37*time.Hour); !got.Equal(want) {
		t.Fatalf("expiry %v want %v", got, want)
	}
	c := e.svc.lastClaims.Load()
	var role string
	if ok, err := c.Lookup("role", &role); !ok || err != nil || role != "admin" {
		t.Fatalf("role %q %v %v", role, ok, err)
	}
	e.clock.Advance(38 * time.Hour)
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	wantReason(t, err, ReasonTokenExpired)
}
