package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/slidejwt/slidejwt/interceptor"
)

// forwarded is one call that a handler of orders makes on its caller's
// behalf: it carries the caller's bearer token, and nothing else of the
// caller's metadata, and it relays a renewal that inventory sends back
// into the trailer of the caller's response, where the caller's holder
// takes it as any renewal (PROTOCOL.md §7). So whichever service renews,
// the client gets the renewed token.
//
// It copies the "authorization" metadata by hand: the package's
// token-forwarding interceptor is not in this version of the library.
type forwarded struct {
	header, trailer metadata.MD
}

// context returns the outgoing context of the downstream call: ctx's
// deadline and cancellation, and the caller's "authorization" value,
// which the session interceptor has verified (there is exactly one).
func (f *forwarded) context(ctx context.Context) context.Context {
	md := metadata.MD{}
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) == 1 {
		md.Set("authorization", v[0])
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// callOptions collect the downstream response's metadata.
func (f *forwarded) callOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.Header(&f.header), grpc.Trailer(&f.trailer)}
}

// renewal returns the downstream renewals as trailer metadata, or nil.
func (f *forwarded) renewal() metadata.MD {
	k := interceptor.DefaultRenewalHeader
	v := append(f.header.Get(k), f.trailer.Get(k)...)
	if len(v) == 0 {
		return nil
	}
	return metadata.MD{k: v}
}

// relay puts the downstream renewal into the trailer of the unary call
// whose handler context is ctx.
func (f *forwarded) relay(ctx context.Context) {
	if md := f.renewal(); md != nil {
		_ = grpc.SetTrailer(ctx, md)
	}
}

// relayStream puts the downstream renewal, which a stream carries once it
// ended, into the trailer of ss.
func (f *forwarded) relayStream(ss grpc.ServerStream) {
	if md := f.renewal(); md != nil {
		ss.SetTrailer(md)
	}
}
