// Command benchratio reads `go test -bench -benchmem` output of the
// package bench on standard input and prints, as Markdown, the median
// ns/op, B/op and allocs/op of every Benchmark<family>/<alg>/<case>, its
// time as a ratio to the same family and alg's floor case (the ratio of
// the medians, and the median of the ratios within each run) and its
// allocations as a difference from floor, and then the performance targets,
// judged on the ratios of the medians and each marked pass or MISS, with
// refresh-rpc-redis as a ratio to refresh-rpc (a comparison, not a
// target). steady-otel (steady with OpenTelemetry metrics) has steady's
// target and is reported beside it, with its ratio to steady. So has
// steady-jwks (steady on a verify-only server whose keys come from a
// JWKS). Where the mesh cases ran (steady-jwks, renew-delegated), a table
// compares them with their local counterparts: steady-jwks with steady,
// and renew-delegated (renewal asked of the signing server on every call)
// with renew-every (renewal signed locally on every call), as ratios of
// the medians and paired within each run, with no target. Where cases
// report redis-rt/op (the Redis cases), a last table gives their round
// trips per call with the other metrics they report and, where they
// report the per-session call interval I and the cache TTL T, the share
// I/(I+T) of calls that the steady state of sessions called at random
// predicts to make a round trip. BenchmarkPaired's results
// (Paired/<family>/<alg>/<case>, each reporting its ratio to its own
// baseline as x-floor or x-middleware-verify) get a last table of their
// own: the median and range of that ratio over the runs, and the target
// judged on the median; they are left out of the other tables.
//
//	go test -run '^$' -bench . -benchmem -count 6 ./bench | go run ./internal/benchratio
//
// It is what scripts/bench prints after the benchstat table.
package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

func main() {
	rs, err := parse(os.Stdin)
	if err == nil && len(rs) == 0 {
		err = fmt.Errorf("no Benchmark<family>/<alg>/<case> results on standard input")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
	write(os.Stdout, summarize(rs))
}

// The cases that the ratios and targets refer to.
const (
	floorCase      = "floor"
	middlewareCase = "middleware-verify"
	steadyCase     = "steady"
	renewCase      = "renew"
	renewEveryCase = "renew-every"
	refreshCase    = "refresh-rpc"
	// The cases with the Redis session store (BenchmarkUnary only).
	steadyRedisCase  = "steady-redis"
	refreshRedisCase = "refresh-rpc-redis"
	// steady with OpenTelemetry metrics (BenchmarkUnary only).
	steadyOtelCase = "steady-otel"
	// The mesh cases: steady on a verify-only server reading a JWKS, and
	// renew-every on one that delegates its renewals (no HS256).
	steadyJWKSCase     = "steady-jwks"
	renewDelegatedCase = "renew-delegated"
)

// result is one line of benchmark output.
type result struct {
	family, alg, cas string
	nsPerOp          float64
	bytesPerOp       float64
	allocsPerOp      float64
	hasMem           bool
	// extra holds the metrics the benchmark reported itself, by unit
	// (hit%, redis-rt/op, …).
	extra map[string]float64
}

// The metrics of the Redis table (the units the benchmarks report).
const (
	unitRoundTrips    = "redis-rt/op"
	unitInterval      = "interval-ms"
	unitPrimeInterval = "prime-interval-ms"
	unitTTL           = "ttl-s"
	unitHit           = "hit%"
	unitCacheBytes    = "csc-B/session"
)

// parse reads the results of benchmarks named
// Benchmark<family>/<alg>/<case>[-<gomaxprocs>]; it skips every other line.
func parse(r io.Reader) ([]result, error) {
	var rs []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		parts := strings.Split(trimProcs(strings.TrimPrefix(f[0], "Benchmark")), "/")
		if len(parts) < 3 {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue // not a result line (a benchmark's log output, say)
		}
		res := result{family: parts[0], alg: strings.Join(parts[1:len(parts)-1], "/"), cas: parts[len(parts)-1]}
		haveNs, haveB, haveAllocs := false, false, false
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: bad value %q", f[0], f[i])
			}
			switch f[i+1] {
			case "ns/op":
				res.nsPerOp, haveNs = v, true
			case "B/op":
				res.bytesPerOp, haveB = v, true
			case "allocs/op":
				res.allocsPerOp, haveAllocs = v, true
			default:
				if res.extra == nil {
					res.extra = map[string]float64{}
				}
				res.extra[f[i+1]] = v
			}
		}
		if !haveNs {
			continue
		}
		res.hasMem = haveB && haveAllocs
		rs = append(rs, res)
	}
	return rs, sc.Err()
}

// trimProcs removes the "-<gomaxprocs>" suffix of a benchmark name.
func trimProcs(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i < 0 || i == len(name)-1 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

// stat is the medians of one family/alg/case over its runs.
type stat struct {
	cas                          string
	runs                         int
	ns, bytes, allocs            float64
	hasMem                       bool
	nsVals, bytesVals, allocVals []float64
	extraVals                    map[string][]float64
}

// extra returns the median of the metric unit over the runs that reported
// it, and whether any did.
func (s *stat) extra(unit string) (float64, bool) {
	vs := s.extraVals[unit]
	if len(vs) == 0 {
		return 0, false
	}
	return median(vs), true
}

// group is one family and alg, its cases in the order they first appear.
type group struct {
	family, alg string
	cases       []*stat
}

func (g *group) get(cas string) *stat {
	for _, s := range g.cases {
		if s.cas == cas {
			return s
		}
	}
	return nil
}

// summarize groups rs by family and alg, in the order of first appearance,
// and computes the medians.
func summarize(rs []result) []*group {
	var gs []*group
	find := func(family, alg string) *group {
		for _, g := range gs {
			if g.family == family && g.alg == alg {
				return g
			}
		}
		g := &group{family: family, alg: alg}
		gs = append(gs, g)
		return g
	}
	for _, r := range rs {
		g := find(r.family, r.alg)
		s := g.get(r.cas)
		if s == nil {
			s = &stat{cas: r.cas, hasMem: true}
			g.cases = append(g.cases, s)
		}
		s.runs++
		s.nsVals = append(s.nsVals, r.nsPerOp)
		s.bytesVals = append(s.bytesVals, r.bytesPerOp)
		s.allocVals = append(s.allocVals, r.allocsPerOp)
		s.hasMem = s.hasMem && r.hasMem
		for unit, v := range r.extra {
			if s.extraVals == nil {
				s.extraVals = map[string][]float64{}
			}
			s.extraVals[unit] = append(s.extraVals[unit], v)
		}
	}
	for _, g := range gs {
		for _, s := range g.cases {
			s.ns, s.bytes, s.allocs = median(s.nsVals), median(s.bytesVals), median(s.allocVals)
		}
	}
	return gs
}

// median returns the median of vs, the mean of the middle two for an even
// count. vs must not be empty.
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// pairedRatio is the median over runs of s's time divided by floor's time
// in the same run: the i-th result of a case is paired with the i-th
// result of floor (or of whichever baseline is passed as floor). When the runs are rounds that each run every case once
// (as scripts/bench does), a pair was measured a few seconds apart, and
// the ratio is robust against the machine's drift between rounds.
func pairedRatio(floor, s *stat) (float64, bool) {
	n := min(len(floor.nsVals), len(s.nsVals))
	if n == 0 {
		return 0, false
	}
	rs := make([]float64, 0, n)
	for i := range n {
		if floor.nsVals[i] <= 0 {
			return 0, false
		}
		rs = append(rs, s.nsVals[i]/floor.nsVals[i])
	}
	return median(rs), true
}

// write prints one Markdown table per family, then the targets.
func write(w io.Writer, all []*group) {
	// The paired groups get their own table, at the end; every other table
	// is of the rest.
	var gs, paired []*group
	for _, g := range all {
		if isPaired(g.family) {
			paired = append(paired, g)
		} else {
			gs = append(gs, g)
		}
	}
	defer writePaired(w, paired)
	if len(gs) == 0 {
		return
	}
	var families []string
	for _, g := range gs {
		if !slices.Contains(families, g.family) {
			families = append(families, g.family)
		}
	}
	for _, fam := range families {
		fmt.Fprintf(w, "### Benchmark%s (medians)\n\n", fam)
		fmt.Fprintln(w, "| alg | case | runs | ns/op | × floor | × floor, paired | B/op | allocs/op | allocs − floor |")
		fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, g := range gs {
			if g.family != fam {
				continue
			}
			floor := g.get(floorCase)
			for _, s := range g.cases {
				ratio, paired, diff := "–", "–", "–"
				if floor != nil && floor.ns > 0 {
					ratio = fmt.Sprintf("%.2f", s.ns/floor.ns)
					if r, ok := pairedRatio(floor, s); ok {
						paired = fmt.Sprintf("%.2f", r)
					}
				}
				bytes, allocs := "–", "–"
				if s.hasMem {
					bytes, allocs = whole(s.bytes), num(s.allocs)
					if floor != nil && floor.hasMem {
						diff = signed(s.allocs - floor.allocs)
					}
				}
				fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n",
					g.alg, s.cas, s.runs, whole(s.ns), ratio, paired, bytes, allocs, diff)
			}
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "### Targets on the medians of separate runs")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Each case and floor measured a second or more apart: where BenchmarkPaired ran, its table (last) is the one")
	fmt.Fprintln(w, "the ratio targets are judged on; this one still judges the allocations and refresh-rpc.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| benchmark | steady / floor ≤ 1.10 | steady-otel / floor ≤ 1.10 | steady-otel / steady | renew / floor ≤ 1.20 | renew-every / middleware-verify ≤ 1.5 | steady allocs − floor ≤ 15 | refresh-rpc / steady ≥ 1.8 | steady-redis / floor ≤ 1.10 | refresh-rpc-redis / refresh-rpc | steady-jwks / floor ≤ 1.10 |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, g := range gs {
		floor, steady, renew, refresh := g.get(floorCase), g.get(steadyCase), g.get(renewCase), g.get(refreshCase)
		steadyOtel := g.get(steadyOtelCase)
		fmt.Fprintf(w, "| %s/%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", g.family, g.alg,
			ratioTarget(floor, steady, func(r float64) bool { return r <= 1.10 }),
			ratioTarget(floor, steadyOtel, func(r float64) bool { return r <= 1.10 }),
			ratio(steady, steadyOtel),
			ratioTarget(floor, renew, func(r float64) bool { return r <= 1.20 }),
			ratioTarget(g.get(middlewareCase), g.get(renewEveryCase), func(r float64) bool { return r <= 1.5 }),
			allocTarget(floor, steady),
			ratioTarget(steady, refresh, func(r float64) bool { return r >= 1.8 }),
			ratioTarget(floor, g.get(steadyRedisCase), func(r float64) bool { return r <= 1.10 }),
			ratio(refresh, g.get(refreshRedisCase)),
			ratioTarget(floor, g.get(steadyJWKSCase), func(r float64) bool { return r <= 1.10 }),
		)
	}
	writeMesh(w, gs)
	writeRedis(w, gs)
}

// The paired families: BenchmarkPaired's, Paired/<family>/<alg>/<case>,
// and BenchmarkSessionsPaired's, SessionsPaired/<alg>/<n>/<load>/<case>;
// each case is timed call by call against its baseline in one loop, which
// reports the ratio itself as x-<baseline>.
const (
	pairedFamily         = "Paired"
	sessionsPairedFamily = "SessionsPaired"
)

func isPaired(family string) bool {
	return family == pairedFamily || family == sessionsPairedFamily
}

// steadyDefaultCase is the sessions sweep's steady with the default cache
// size, judged against middleware-verify.
const steadyDefaultCase = "steady-default"

// pairedTargets are the targets judged on BenchmarkPaired's ratios: the
// baseline's name (the ratio's unit is "x-" and it) and the largest ratio
// that meets the target; floor against floor is the method's control.
var pairedTargets = map[string]struct {
	baseline string
	max      float64
}{
	floorCase:       {floorCase, 0},
	steadyCase:      {floorCase, 1.10},
	steadyOtelCase:  {floorCase, 1.10},
	steadyRedisCase: {floorCase, 1.10},
	steadyJWKSCase:  {floorCase, 1.10},
	renewCase:       {floorCase, 1.20},
	renewEveryCase:  {middlewareCase, 1.5},
	// The sessions sweep's: never slower than middleware-verify.
	steadyDefaultCase: {middlewareCase, 1.00},
}

// writePaired prints BenchmarkPaired's ratios: per case, the median over
// the runs of the ratio each run measured, its range, and the target,
// judged on the median as printed (two decimals).
func writePaired(w io.Writer, gs []*group) {
	var rows []string
	for _, g := range gs {
		for _, s := range g.cases {
			t, ok := pairedTargets[s.cas]
			if !ok {
				continue
			}
			unit := "x-" + t.baseline
			vs := s.extraVals[unit]
			if len(vs) == 0 {
				continue
			}
			med := math.Round(median(vs)*100) / 100
			target := "control (≈ 1.00)"
			if t.max > 0 {
				verdict := "pass"
				if med > t.max {
					verdict = "MISS"
				}
				target = fmt.Sprintf("≤ %.2f %s", t.max, verdict)
			}
			hit := "–"
			if h, ok := s.extra(unitHit); ok {
				hit = fmt.Sprintf("%.1f", h)
			}
			rows = append(rows, fmt.Sprintf("| %s/%s | %s | %s | %d | %.2f | %.2f–%.2f | %s | %s |",
				g.family, g.alg, s.cas, t.baseline, len(vs), med, slices.Min(vs), slices.Max(vs), hit, target))
		}
	}
	writeTable(w, "### Paired: each case against its baseline, call by call in one loop",
		"| benchmark | case | baseline | runs | × baseline (median) | range | hit% | target |",
		"| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", rows)
}

// writeMesh prints, for the groups where a mesh case ran, the verify-only
// server's cases against their local counterparts: steady-jwks against
// steady, and renew-delegated, whose every call asks the signing server
// for its renewal, against renew-every, whose every call signs its
// renewal locally. Ratios of the medians, and paired within each run; no
// targets.
func writeMesh(w io.Writer, gs []*group) {
	var rows []string
	for _, g := range gs {
		jwks, delegated := g.get(steadyJWKSCase), g.get(renewDelegatedCase)
		if jwks == nil && delegated == nil {
			continue
		}
		floor, steady, every := g.get(floorCase), g.get(steadyCase), g.get(renewEveryCase)
		rows = append(rows, fmt.Sprintf("| %s/%s | %s | %s | %s | %s | %s | %s | %s |", g.family, g.alg,
			ratio(floor, jwks), ratio(steady, jwks), pairedOrDash(steady, jwks),
			ratio(floor, every), ratio(floor, delegated), ratio(every, delegated), pairedOrDash(every, delegated)))
	}
	writeTable(w, "### Mesh: verify-only (JWKS) and delegated renewal against local (medians)",
		"| benchmark | steady-jwks / floor | steady-jwks / steady | steady-jwks / steady, paired | renew-every / floor | renew-delegated / floor | renew-delegated / renew-every | renew-delegated / renew-every, paired |",
		"| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", rows)
}

// writeRedis prints the cases that report round trips to Redis: time as a
// multiple of floor and of steady (the same cache of verified tokens
// without the store), round trips per call, and what the case reports of
// its conditions. "I/(I+T)" is the share of calls that would make a round
// trip in the steady state of sessions each called at random with mean
// interval I, under a cache TTL T: an answer is fetched, lives T, and the
// next call after that fetches it again.
func writeRedis(w io.Writer, gs []*group) {
	var rows []string
	for _, g := range gs {
		floor, steady := g.get(floorCase), g.get(steadyCase)
		for _, s := range g.cases {
			rt, ok := s.extra(unitRoundTrips)
			if !ok {
				continue
			}
			predicted := "–"
			iv, okI := s.extra(unitInterval)
			ttl, okT := s.extra(unitTTL)
			if okI && okT && iv+ttl*1000 > 0 {
				predicted = fmt.Sprintf("%.3f", iv/(iv+ttl*1000))
			}
			rows = append(rows, fmt.Sprintf("| %s/%s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |",
				g.family, g.alg, s.cas, s.runs, ratio(floor, s), pairedOrDash(floor, s), ratio(steady, s),
				metric(s, unitTTL, "%g"), metric(s, unitInterval, "%.0f"), metric(s, unitPrimeInterval, "%.0f"),
				fmt.Sprintf("%.4f", rt), predicted, metric(s, unitHit, "%.1f"), metric(s, unitCacheBytes, "%.0f")))
		}
	}
	writeTable(w, "### Redis round trips (medians)",
		"| benchmark | case | runs | × floor | × floor, paired | × steady | TTL (s) | interval I (ms) | primed for I (ms) | redis-rt/op | I/(I+T) | hit% | csc-B/session |",
		"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", rows)
}

// writeTable prints a Markdown table under a heading, or nothing when it
// has no rows.
func writeTable(w io.Writer, title, head, align string, rows []string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n\n%s\n%s\n", title, head, align)
	for _, r := range rows {
		fmt.Fprintln(w, r)
	}
}

// metric formats the median of s's metric unit, or "–" without one.
func metric(s *stat, unit, format string) string {
	v, ok := s.extra(unit)
	if !ok {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

// pairedOrDash is pairedRatio formatted, "–" without floor or s.
func pairedOrDash(floor, s *stat) string {
	if floor == nil || s == nil {
		return "–"
	}
	if r, ok := pairedRatio(floor, s); ok {
		return fmt.Sprintf("%.2f", r)
	}
	return "–"
}

// ratio formats b's median time as a ratio to a's, with no target; "–"
// when a case is missing.
func ratio(a, b *stat) string {
	if a == nil || b == nil || a.ns <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", b.ns/a.ns)
}

// ratioTarget formats b's median time as a ratio to a's, and whether it
// meets its target, judged on the ratio as printed (two decimals); "–"
// when a case is missing.
func ratioTarget(a, b *stat, meets func(ratio float64) bool) string {
	if a == nil || b == nil || a.ns <= 0 {
		return "–"
	}
	r := math.Round(b.ns/a.ns*100) / 100
	verdict := "pass"
	if !meets(r) {
		verdict = "MISS"
	}
	return fmt.Sprintf("%.2f %s", r, verdict)
}

// allocTarget is the allocations target: steady allocates at most 15
// objects per call more than floor.
func allocTarget(floor, steady *stat) string {
	if floor == nil || steady == nil || !floor.hasMem || !steady.hasMem {
		return "–"
	}
	d := steady.allocs - floor.allocs
	verdict := "pass"
	if d > 15 {
		verdict = "MISS"
	}
	return signed(d) + " " + verdict
}

// num formats v without a fraction when it is whole, else with one digit.
func num(v float64) string {
	if v == float64(int64(v)) {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// whole formats v rounded to a whole number.
func whole(v float64) string { return strconv.FormatFloat(math.Round(v), 'f', 0, 64) }

// signed is num with a sign.
func signed(v float64) string {
	if v >= 0 {
		return "+" + num(v)
	}
	return num(v)
}
