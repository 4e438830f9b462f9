package bench

import (
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// sessionPairs are the cases that BenchmarkSessionsPaired measures, each
// against the baseline of its target: steady (a cache sized for the
// sessions) against floor, and steady-default (the default cache) against
// middleware-verify, which it must never be slower than.
var sessionPairs = []struct{ cas, baseline string }{
	{caseSteady, caseFloor},
	{caseSteadyDefault, caseMiddleware},
}

// BenchmarkSessionsPaired is the sessions sweep (see BenchmarkSessions)
// measured as BenchmarkPaired measures single calls: every iteration calls
// the case and then its baseline (or the other way round, alternately)
// with the same session, on clients kept warm across loads, and times
// each call. In the -par32 loads each of the 32 goroutines does the same
// and the times add up. It reports ns/op as the case's time per call,
// <baseline>-ns/op and x-<baseline>, and hit% as BenchmarkSessions does.
func BenchmarkSessionsPaired(b *testing.B) {
	eachSweepLoad(b, func(b *testing.B, sw *sweep, _, load string) {
		for _, p := range sessionPairs {
			b.Run(p.cas, func(b *testing.B) { sw.runPaired(b, p.cas, p.baseline, load) })
		}
	})
}

// runPaired is one timed pair of cases in load.
func (sw *sweep) runPaired(b *testing.B, c, baseline, load string) {
	d, base := sw.client(c), sw.client(baseline)
	pick := sw.picker(c, load)
	var tCase, tBase, verified atomic.Int64
	// pair makes one call of each with session i, in the order odd says,
	// and adds up their times and the case's verifications.
	pair := func(i int, odd bool) error {
		first, second := d, base
		if odd {
			first, second = base, d
		}
		v0 := verifications.Load()
		start := time.Now()
		if err := sw.call(first, i); err != nil {
			return err
		}
		mid := time.Now()
		v1 := verifications.Load()
		if err := sw.call(second, i); err != nil {
			return err
		}
		end := time.Now()
		if odd {
			tBase.Add(int64(mid.Sub(start)))
			tCase.Add(int64(end.Sub(mid)))
			verified.Add(verifications.Load() - v1)
		} else {
			tCase.Add(int64(mid.Sub(start)))
			tBase.Add(int64(end.Sub(mid)))
			verified.Add(v1 - v0)
		}
		return nil
	}
	b.ResetTimer()
	before := verifications.Load()
	if load == "rr" || load == "rand" {
		r := rand.New(rand.NewPCG(1, 2))
		odd := false
		for b.Loop() {
			if err := pair(pick(r), odd); err != nil {
				b.Fatal(err)
			}
			odd = !odd
		}
	} else {
		b.SetParallelism(max(1, sessionGoroutines/runtime.GOMAXPROCS(0)))
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 2))
			odd := false
			for pb.Next() {
				if err := pair(pick(r), odd); err != nil {
					b.Error(err)
					return
				}
				odd = !odd
			}
		})
	}
	b.StopTimer()
	if b.N == 0 || tBase.Load() == 0 {
		return
	}
	b.ReportMetric(float64(tCase.Load())/float64(b.N), "ns/op")
	b.ReportMetric(float64(tBase.Load())/float64(b.N), baseline+"-ns/op")
	b.ReportMetric(float64(tCase.Load())/float64(tBase.Load()), "x-"+baseline)
	if load != "rr" && load != "rand" {
		// In the -par32 loads the other goroutines' calls overlap each
		// one's, so the case's verifications are the loop's total less
		// the baseline's: none for floor, one a call for
		// middleware-verify.
		verified.Store(verifications.Load() - before)
		if baseline == caseMiddleware {
			verified.Add(-int64(b.N))
		}
	}
	b.ReportMetric(100*(1-float64(verified.Load())/float64(b.N)), "hit%")
}
