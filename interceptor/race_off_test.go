//go:build !race

package interceptor

const raceBuild = false
