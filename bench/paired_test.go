package bench

import (
	"context"
	"testing"
	"time"
)

// pairedCases are the cases that BenchmarkPaired measures, each against
// the baseline of its target: floor for those with a target as a ratio to
// floor, and middleware-verify for renew-every. floor against floor is a
// control that measures the method: it should come out at 1.00.
var pairedCases = map[string]string{
	caseFloor:       caseFloor,
	caseSteady:      caseFloor,
	caseSteadyOtel:  caseFloor,
	caseSteadyRedis: caseFloor,
	caseSteadyJWKS:  caseFloor,
	caseRenew:       caseFloor,
	caseRenewEvery:  caseMiddleware,
}

// BenchmarkPaired measures each case of pairedCases against its baseline
// in one loop, call by call: every iteration makes one call of the case
// and one call of a baseline fixture of its own, in alternating order, and
// times each. BenchmarkUnary and BenchmarkStreamOpen run each case for a second
// on its own, a second or more from its floor; on a virtual machine whose
// speed drifts by 10-30 % from one second to the next, that drift is most
// of their ratios' spread. Here a case and its floor share every moment
// of the run, so the drift cancels out of the ratio.
//
// It reports ns/op as the case's time per call, <baseline>-ns/op as the
// baseline's, and x-<baseline> (x-floor, x-middleware-verify) as their
// ratio (the case's total time over the baseline's). It reports no
// allocations: BenchmarkUnary and BenchmarkStreamOpen do. The two fixtures
// share the process, so each pays for part of the garbage the other
// makes; a case that allocates more than its baseline is flattered by that
// much (steady's extra allocation is about a tenth of floor's).
func BenchmarkPaired(b *testing.B) {
	keys := mustKeys(b)
	ops := map[string]func(*fixture) error{familyUnary: (*fixture).unary, familyStreamOpen: (*fixture).streamOpen}
	for _, family := range families {
		b.Run(family, func(b *testing.B) {
			for _, alg := range algs {
				b.Run(alg, func(b *testing.B) {
					for _, c := range allCasesOf(family) {
						base, ok := pairedCases[c]
						if !ok {
							continue
						}
						b.Run(c, func(b *testing.B) {
							benchPaired(b, family, ops[family], keys[alg], c, base)
						})
					}
				})
			}
		})
	}
}

func benchPaired(b *testing.B, family string, op func(*fixture) error, k *algKeys, c, baseline string) {
	floor := newFixture(b, context.Background(), k, baseline)
	f := newFixture(b, context.Background(), k, c)
	for _, x := range []*fixture{floor, f} {
		if err := x.check(family); err != nil {
			b.Fatal(err)
		}
	}
	var tCase, tFloor time.Duration
	timed := func(x *fixture, sum *time.Duration) {
		start := time.Now()
		if err := op(x); err != nil {
			b.Fatal(err)
		}
		*sum += time.Since(start)
	}
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			timed(f, &tCase)
			timed(floor, &tFloor)
		} else {
			timed(floor, &tFloor)
			timed(f, &tCase)
		}
		n++
	}
	b.StopTimer()
	if err := f.checkEvery(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(tCase.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(float64(tFloor.Nanoseconds())/float64(n), baseline+"-ns/op")
	b.ReportMetric(float64(tCase)/float64(tFloor), "x-"+baseline)
}
