package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/slidejwt/slidejwt/interceptor"
)

// The attribute names of the log lines, as the example server and
// otelslidejwt name them.
const (
	methodKey  = "rpc.method"
	reasonKey  = "slidejwt.reason"
	subjectKey = "enduser.id"
	sessionKey = "session.id"
	peerKey    = "peer" // the mesh identity of the caller's certificate
)

// noCert names, in the log, a caller that presented no certificate: an
// end user's client.
const noCert = "(no certificate)"

func newLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// caller is the peer attribute of a call's log line.
func caller(ctx context.Context) string {
	if id := peerIdentity(ctx); id != "" {
		return id
	}
	return noCert
}

func method(e interceptor.Event) string { return strings.TrimPrefix(e.Method, "/") }

func reason(e interceptor.Event) string {
	if e.Reason != 0 {
		return interceptor.WireReason(e.Reason)
	}
	if r, ok := interceptor.ReasonOf(e.Err); ok {
		return interceptor.WireReason(r)
	}
	return ""
}

// authEvents logs what the auth service does: logins, renewals (and, for
// TokenService/Renew, which service asked for it), refreshes, logouts and
// refusals. Events carry no token, so nothing here can log one.
func authEvents(log *slog.Logger) func(context.Context, interceptor.Event) {
	return func(ctx context.Context, e interceptor.Event) {
		switch e.Kind {
		case interceptor.EventSessionStarted:
			log.InfoContext(ctx, "login", subjectKey, e.Subject, sessionKey, e.SessionID, "exp", e.Expiry)
		case interceptor.EventRenewed:
			log.InfoContext(ctx, "renewed", methodKey, method(e), peerKey, caller(ctx), subjectKey, e.Subject, sessionKey, e.SessionID, "exp", e.Expiry)
		case interceptor.EventRefreshed:
			log.InfoContext(ctx, "refreshed", subjectKey, e.Subject, sessionKey, e.SessionID, "exp", e.Expiry)
		case interceptor.EventRevoked:
			log.InfoContext(ctx, "logout", sessionKey, e.SessionID)
		case interceptor.EventRejected:
			log.InfoContext(ctx, "rejected", methodKey, method(e), reasonKey, reason(e), peerKey, caller(ctx), sessionKey, e.SessionID, "err", e.Err)
		case interceptor.EventRenewalFailed:
			log.WarnContext(ctx, "renewal failed", methodKey, method(e), sessionKey, e.SessionID, "err", e.Err)
		}
	}
}

// serviceEvents logs what a verify-only service does: each call it makes
// to auth's TokenService/Renew (one per presented token per renewal, not
// one per response that carries its answer), refusals, and streams it
// ended.
func serviceEvents(log *slog.Logger) func(context.Context, interceptor.Event) {
	return func(ctx context.Context, e interceptor.Event) {
		switch e.Kind {
		case interceptor.EventDelegatedRenewal:
			switch {
			case e.Err != nil:
				log.WarnContext(ctx, "asked auth for a renewal: none", subjectKey, e.Subject, sessionKey, e.SessionID, "err", e.Err)
			case e.Expiry.IsZero():
				log.InfoContext(ctx, "asked auth for a renewal: none due", subjectKey, e.Subject, sessionKey, e.SessionID)
			default:
				log.InfoContext(ctx, "asked auth for a renewal", subjectKey, e.Subject, sessionKey, e.SessionID, "exp", e.Expiry)
			}
		case interceptor.EventRejected:
			log.InfoContext(ctx, "rejected", methodKey, method(e), reasonKey, reason(e), peerKey, caller(ctx), sessionKey, e.SessionID, "err", e.Err)
		case interceptor.EventStreamEnded:
			log.InfoContext(ctx, "stream ended", methodKey, method(e), reasonKey, reason(e), sessionKey, e.SessionID, "err", e.Err)
		}
	}
}

// jwksLog is the transport of a verify-only service's JWKS client: it
// logs the key ids of each JWKS it receives when they differ from the
// last ones, so that the log shows when a service learnt of a rotation.
// A JWKS holds public keys only.
type jwksLog struct {
	base http.RoundTripper
	log  *slog.Logger

	mu   sync.Mutex
	last []string
}

func (t *jwksLog) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, interceptor.DefaultJWKSMaxSize+1))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return resp, nil // the key set reports it
	}
	kids := make([]string, 0, len(doc.Keys))
	for _, k := range doc.Keys {
		kids = append(kids, k.Kid)
	}
	t.mu.Lock()
	changed := !slices.Equal(kids, t.last)
	t.last = kids
	t.mu.Unlock()
	if changed {
		t.log.Info("JWKS fetched", "kids", strings.Join(kids, ","))
	}
	return resp, nil
}
