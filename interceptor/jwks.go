package interceptor

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// JWKSPath is where a JWKS is served by convention (RFC 8414 §3, OpenID
// Connect Discovery): the path to mount [Server.JWKSHandler] on.
const JWKSPath = "/.well-known/jwks.json"

// DefaultJWKSMaxAge is the Cache-Control max-age that [Server.JWKSHandler]
// sends, and the refresh interval a [RemoteKeySet] uses for a response
// without one.
const DefaultJWKSMaxAge = 5 * time.Minute

// A JWKSHandlerOption configures [Server.JWKSHandler].
type JWKSHandlerOption interface{ applyJWKS(*jwksConfig) }

type jwksOptionFunc func(*jwksConfig)

func (f jwksOptionFunc) applyJWKS(c *jwksConfig) { f(c) }

type jwksConfig struct {
	maxAge time.Duration
}

// WithJWKSMaxAge sets the max-age of the handler's Cache-Control header,
// in whole seconds: how long caches and verifiers may keep the document.
// A new key must be published at least this long before it signs
// (PROTOCOL.md §9). Default [DefaultJWKSMaxAge]; 0 asks for no caching.
func WithJWKSMaxAge(d time.Duration) JWKSHandlerOption {
	return jwksOptionFunc(func(c *jwksConfig) { c.maxAge = d })
}

// JWKSHandler returns an http.Handler that serves the public halves of the
// server's keys as a JWK Set (see [KeySet.JWKS]), for verify-only services
// ([RemoteKeySet]), Envoy's remote_jwks or Istio's jwksUri. Mount it at
// [JWKSPath]. It follows [Server.RotateKeys]: each request serves the
// current key set, active and verify-only keys alike. It never serves a
// private key, and an HMAC secret not at all.
//
// It answers GET and HEAD with Content-Type application/json,
// Cache-Control "public, max-age=N" ([WithJWKSMaxAge]) and a strong ETag,
// and answers a matching If-None-Match with 304 Not Modified; other
// methods get 405. The document is built once per key set. It fails with
// [ErrInvalidOption] for a negative max-age.
func (s *Server) JWKSHandler(opts ...JWKSHandlerOption) (http.Handler, error) {
	cfg := jwksConfig{maxAge: DefaultJWKSMaxAge}
	for _, o := range opts {
		o.applyJWKS(&cfg)
	}
	if cfg.maxAge < 0 {
		return nil, fmt.Errorf("%w: JWKS max-age %v is negative", ErrInvalidOption, cfg.maxAge)
	}
	secs := int64(cfg.maxAge / time.Second)
	return &jwksHandler{s: s, cacheControl: "public, max-age=" + strconv.FormatInt(secs, 10)}, nil
}

type jwksHandler struct {
	s            *Server
	cacheControl string
	doc          atomic.Pointer[jwksDoc]
}

// jwksDoc is the document of one key set (and, for a remote set, of one
// fetch of it).
type jwksDoc struct {
	ks   *KeySet
	snap *remoteSnapshot
	body []byte
	etag string
}

func (h *jwksHandler) current() (*jwksDoc, error) {
	ks := h.s.ver.Load().keys
	var snap *remoteSnapshot
	if ks.remote != nil {
		snap = ks.remote.cur.Load()
	}
	if d := h.doc.Load(); d != nil && d.ks == ks && d.snap == snap {
		return d, nil
	}
	body, err := marshalJWKS(ks.publicKeys())
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	d := &jwksDoc{ks: ks, snap: snap, body: body, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`}
	h.doc.Store(d)
	return d, nil
}

func (h *jwksHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	d, err := h.current()
	if err != nil {
		http.Error(w, "slidejwt: cannot encode the key set", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", h.cacheControl)
	hdr.Set("ETag", d.etag)
	hdr.Set("X-Content-Type-Options", "nosniff")
	// ServeContent answers If-None-Match, HEAD and ranges.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(d.body))
}
