package bench

import (
	"context"
	"slices"
	"testing"
	"time"
)

// pairedCases are the cases that BenchmarkPaired measures against floor:
// those with a target as a ratio to floor, and floor itself, as a control
// that measures the method (floor against floor should come out at 1.00).
var pairedCases = []string{caseFloor, caseSteady, caseSteadyOtel, caseSteadyRedis, caseSteadyJWKS, caseRenew}

// BenchmarkPaired measures each case of pairedCases against floor in one
// loop, call by call: every iteration makes one call of the case and one
// call of a floor fixture of its own, in alternating order, and times
// each. BenchmarkUnary and BenchmarkStreamOpen run each case for a second
// on its own, a second or more from its floor; on a virtual machine whose
// speed drifts by 10-30 % from one second to the next, that drift is most
// of their ratios' spread. Here a case and its floor share every moment
// of the run, so the drift cancels out of the ratio.
//
// It reports ns/op as the case's time per call, floor-ns/op as floor's,
// and x-floor as their ratio (the case's total time over floor's). It
// reports no allocations: BenchmarkUnary and BenchmarkStreamOpen do. The
// two fixtures share the process, so each pays for part of the garbage
// the other makes; the case, which allocates more, is flattered by that
// much (its extra allocation is about a tenth of floor's).
func BenchmarkPaired(b *testing.B) {
	keys := mustKeys(b)
	ops := map[string]func(*fixture) error{familyUnary: (*fixture).unary, familyStreamOpen: (*fixture).streamOpen}
	for _, family := range families {
		b.Run(family, func(b *testing.B) {
			for _, alg := range algs {
				b.Run(alg, func(b *testing.B) {
					for _, c := range allCasesOf(family) {
						if !slices.Contains(pairedCases, c) {
							continue
						}
						b.Run(c, func(b *testing.B) {
							benchPaired(b, family, ops[family], keys[alg], c)
						})
					}
				})
			}
		})
	}
}

func benchPaired(b *testing.B, family string, op func(*fixture) error, k *algKeys, c string) {
	floor := newFixture(b, context.Background(), k, caseFloor)
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
	b.ReportMetric(float64(tFloor.Nanoseconds())/float64(n), "floor-ns/op")
	b.ReportMetric(float64(tCase)/float64(tFloor), "x-floor")
}
