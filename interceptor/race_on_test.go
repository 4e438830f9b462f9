//go:build race

package interceptor

// raceBuild: the race detector slows the bound tests' million keys about
// tenfold; they push fewer under it (see cacheMillion).
const raceBuild = true
