package main

import (
	"reflect"
	"strings"
	"testing"
)

const input = `goos: linux
goarch: amd64
pkg: github.com/slidejwt/slidejwt/bench
cpu: Some CPU @ 2.00GHz
BenchmarkUnary/HS256/floor-2         	   10000	    100000 ns/op	    8000 B/op	     150 allocs/op
BenchmarkUnary/HS256/floor-2         	   10000	    120000 ns/op	    8100 B/op	     151 allocs/op
BenchmarkUnary/HS256/floor-2         	   10000	     90000 ns/op	    8200 B/op	     150 allocs/op
BenchmarkUnary/HS256/steady-2        	   10000	    105000 ns/op	    9000 B/op	     160 allocs/op
BenchmarkUnary/HS256/steady-2        	   10000	    115000 ns/op	    9000 B/op	     162 allocs/op
BenchmarkUnary/HS256/renew-2         	   10000	    130000 ns/op	    9500 B/op	     170 allocs/op
BenchmarkUnary/HS256/refresh-rpc-2   	    5000	    250000 ns/op	   38000 B/op	     570 allocs/op
BenchmarkStreamOpen/EdDSA/floor      	   10000	    200000 ns/op	   12000 B/op	     200 allocs/op
BenchmarkStreamOpen/EdDSA/steady     	   10000	    230000 ns/op	   13000 B/op	     220 allocs/op
BenchmarkNoSubBenchmarks-2           	   10000	      5000 ns/op
BenchmarkUnary/HS256/floor-2 log line from the benchmark
PASS
ok  	github.com/slidejwt/slidejwt/bench	100.0s
`

func TestParse(t *testing.T) {
	rs, err := parse(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rs), 9; got != want {
		t.Fatalf("got %d results, want %d", got, want)
	}
	tests := []struct {
		i    int
		want result
	}{
		{0, result{family: "Unary", alg: "HS256", cas: "floor", nsPerOp: 100000, bytesPerOp: 8000, allocsPerOp: 150, hasMem: true}},
		{6, result{family: "Unary", alg: "HS256", cas: "refresh-rpc", nsPerOp: 250000, bytesPerOp: 38000, allocsPerOp: 570, hasMem: true}},
		{8, result{family: "StreamOpen", alg: "EdDSA", cas: "steady", nsPerOp: 230000, bytesPerOp: 13000, allocsPerOp: 220, hasMem: true}},
	}
	for _, tt := range tests {
		if got := rs[tt.i]; !reflect.DeepEqual(got, tt.want) {
			t.Errorf("result %d: got %+v, want %+v", tt.i, got, tt.want)
		}
	}
}

func TestTrimProcs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Unary/HS256/floor-2", "Unary/HS256/floor"},
		{"Unary/HS256/refresh-rpc-16", "Unary/HS256/refresh-rpc"},
		{"Unary/HS256/refresh-rpc", "Unary/HS256/refresh-rpc"},
		{"Unary/HS256/middleware-verify", "Unary/HS256/middleware-verify"},
		{"Unary/HS256/x-", "Unary/HS256/x-"},
	}
	for _, tt := range tests {
		if got := trimProcs(tt.in); got != tt.want {
			t.Errorf("trimProcs(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{120, 100, 90, 1000, 95}, 100},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestWrite(t *testing.T) {
	rs, err := parse(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	want := `### BenchmarkUnary (medians)

| alg | case | runs | ns/op | × floor | × floor, paired | B/op | allocs/op | allocs − floor |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| HS256 | floor | 3 | 100000 | 1.00 | 1.00 | 8100 | 150 | +0 |
| HS256 | steady | 2 | 110000 | 1.10 | 1.00 | 9000 | 161 | +11 |
| HS256 | renew | 1 | 130000 | 1.30 | 1.30 | 9500 | 170 | +20 |
| HS256 | refresh-rpc | 1 | 250000 | 2.50 | 2.50 | 38000 | 570 | +420 |

### BenchmarkStreamOpen (medians)

| alg | case | runs | ns/op | × floor | × floor, paired | B/op | allocs/op | allocs − floor |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| EdDSA | floor | 1 | 200000 | 1.00 | 1.00 | 12000 | 200 | +0 |
| EdDSA | steady | 1 | 230000 | 1.15 | 1.15 | 13000 | 220 | +20 |

### Targets on the medians of separate runs

Each case and floor measured a second or more apart: where BenchmarkPaired ran, its table (last) is the one
the ratio targets are judged on; this one still judges the allocations and refresh-rpc.

| benchmark | steady / floor ≤ 1.10 | steady-otel / floor ≤ 1.10 | steady-otel / steady | renew / floor ≤ 1.20 | renew-every / middleware-verify ≤ 1.5 | steady allocs − floor ≤ 15 | refresh-rpc / steady ≥ 1.8 | steady-redis / floor ≤ 1.10 | refresh-rpc-redis / refresh-rpc | steady-jwks / floor ≤ 1.10 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| Unary/HS256 | 1.10 pass | – | – | 1.30 MISS | – | +11 pass | 2.27 pass | – | – | – |
| StreamOpen/EdDSA | 1.15 MISS | – | – | – | – | +20 MISS | – | – | – | – |
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestWrite_NoMemory(t *testing.T) {
	rs, err := parse(strings.NewReader("BenchmarkUnary/HS256/floor-2 100 1000 ns/op\nBenchmarkUnary/HS256/steady-2 100 1500 ns/op\n"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	for _, want := range []string{
		"| HS256 | steady | 1 | 1500 | 1.50 | 1.50 | – | – | – |",
		"| Unary/HS256 | 1.50 MISS | – | – | – | – | – | – | – | – | – |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, b.String())
		}
	}
}

// TestWrite_RenewEvery checks that renew-every gets its row in the
// medians table and is judged against middleware-verify, not floor.
func TestWrite_RenewEvery(t *testing.T) {
	rs, err := parse(strings.NewReader(`BenchmarkUnary/ES256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/ES256/middleware-verify-2 100 180000 ns/op 13000 B/op 240 allocs/op
BenchmarkUnary/ES256/renew-every-2 100 260000 ns/op 21000 B/op 260 allocs/op
BenchmarkUnary/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/middleware-verify-2 100 70000 ns/op 12000 B/op 225 allocs/op
BenchmarkUnary/HS256/renew-every-2 100 110000 ns/op 21000 B/op 265 allocs/op
`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	for _, want := range []string{
		"| ES256 | renew-every | 1 | 260000 | 5.20 | 5.20 | 21000 | 260 | +110 |",
		"| Unary/ES256 | – | – | – | – | 1.44 pass | – | – | – | – | – |",
		"| Unary/HS256 | – | – | – | – | 1.57 MISS | – | – | – | – | – |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, b.String())
		}
	}
}

func TestRatioTarget(t *testing.T) {
	atMost110 := func(r float64) bool { return r <= 1.10 }
	tests := []struct {
		a, b *stat
		want string
	}{
		{&stat{ns: 1000}, &stat{ns: 1104}, "1.10 pass"}, // judged as printed
		{&stat{ns: 1000}, &stat{ns: 1105}, "1.11 MISS"},
		{&stat{ns: 1000}, &stat{ns: 900}, "0.90 pass"},
		{nil, &stat{ns: 900}, "–"},
		{&stat{ns: 1000}, nil, "–"},
	}
	for _, tt := range tests {
		if got := ratioTarget(tt.a, tt.b, atMost110); got != tt.want {
			t.Errorf("ratioTarget(%v, %v): got %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestPairedRatio(t *testing.T) {
	// The machine slowed down during run 3, between floor and steady: the
	// ratio of the medians is 210/100, while in all but one run steady
	// took 1.05× floor's time.
	floor := &stat{nsVals: []float64{100, 100, 100, 200, 200}}
	steady := &stat{nsVals: []float64{105, 105, 210, 210, 210}}
	if got, want := median(steady.nsVals)/median(floor.nsVals), 2.1; got != want {
		t.Fatalf("premise: ratio of medians: got %v, want %v", got, want)
	}
	got, ok := pairedRatio(floor, steady)
	if !ok || got != 1.05 {
		t.Errorf("pairedRatio: got %v, %v; want 1.05, true", got, ok)
	}
	// Fewer runs of one case: only the runs both have are paired.
	got, ok = pairedRatio(floor, &stat{nsVals: []float64{300}})
	if !ok || got != 3 {
		t.Errorf("pairedRatio, one run: got %v, %v; want 3, true", got, ok)
	}
	if _, ok := pairedRatio(floor, &stat{}); ok {
		t.Error("pairedRatio with no runs: got ok, want not ok")
	}
}

// TestWrite_Redis checks the Redis cases: rows in the medians table with
// their round trips ignored, steady-redis judged against floor, and
// refresh-rpc-redis given as a ratio to refresh-rpc without a verdict.
func TestWrite_Redis(t *testing.T) {
	rs, err := parse(strings.NewReader(`BenchmarkUnary/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/refresh-rpc-2 100 200000 ns/op 36000 B/op 446 allocs/op
BenchmarkUnary/HS256/steady-redis-2 100 56000 ns/op 0.0001 redis-rt/op 10200 B/op 168 allocs/op
BenchmarkUnary/HS256/refresh-rpc-redis-2 100 500000 ns/op 1.98 redis-rt/op 37500 B/op 478 allocs/op
BenchmarkUnary/ES256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/ES256/steady-redis-2 100 55000 ns/op 0.0001 redis-rt/op 10200 B/op 168 allocs/op
`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	for _, want := range []string{
		"| HS256 | steady-redis | 1 | 56000 | 1.12 | 1.12 | 10200 | 168 | +18 |",
		"| HS256 | refresh-rpc-redis | 1 | 500000 | 10.00 | 10.00 | 37500 | 478 | +328 |",
		"| Unary/HS256 | – | – | – | – | – | – | – | 1.12 MISS | 2.50 | – |",
		"| Unary/ES256 | – | – | – | – | – | – | – | 1.10 pass | – | – |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, b.String())
		}
	}
}

// TestWrite_SteadyOtel checks steady-otel: its row beside steady in the
// medians table, judged against floor with steady's target, and its ratio
// to steady without a verdict.
func TestWrite_SteadyOtel(t *testing.T) {
	rs, err := parse(strings.NewReader(`BenchmarkUnary/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/steady-2 100 54000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/HS256/steady-otel-2 100 55500 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/ES256/steady-2 100 54000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/steady-otel-2 100 56000 ns/op 10200 B/op 166 allocs/op
BenchmarkStreamOpen/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	for _, want := range []string{
		"| HS256 | steady | 1 | 54000 | 1.08 | 1.08 | 10200 | 166 | +16 |\n| HS256 | steady-otel | 1 | 55500 | 1.11 | 1.11 | 10200 | 166 | +16 |",
		"| Unary/HS256 | 1.08 pass | 1.11 MISS | 1.03 | – | – | +16 MISS | – | – | – | – |",
		"| Unary/ES256 | 1.08 pass | 1.12 MISS | 1.04 | – | – | +16 MISS | – | – | – | – |",
		"| StreamOpen/HS256 | – | – | – | – | – | – | – | – | – | – |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, b.String())
		}
	}
}

// TestWrite_RedisSessions checks the Redis table: a row for every case
// that reports redis-rt/op, with its ratios to floor and steady, its
// metrics, and the share I/(I+T) from its interval and TTL; the Unary
// case, which reports neither, gets "–" there; cases without round trips
// get no row.
func TestWrite_RedisSessions(t *testing.T) {
	rs, err := parse(strings.NewReader(`BenchmarkSessions/HS256/100000/rand/floor-2 20000 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkSessions/HS256/100000/rand/steady-2 20000 55000 ns/op 100.0 hit% 9400 B/op 158 allocs/op
BenchmarkSessions/HS256/100000/rand/steady-redis-ttl30s-2 20000 100000 ns/op 800.0 csc-B/session 100.0 hit% 10000 interval-ms 9000 prime-interval-ms 0.26 redis-rt/op 30.00 ttl-s 10600 B/op 172 allocs/op
BenchmarkSessions/HS256/100000/rand/steady-redis-ttl30s-2 20000 120000 ns/op 800.0 csc-B/session 100.0 hit% 12000 interval-ms 11000 prime-interval-ms 0.30 redis-rt/op 30.00 ttl-s 10600 B/op 172 allocs/op
BenchmarkUnary/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/steady-redis-2 100 56000 ns/op 0.0001 redis-rt/op 10200 B/op 168 allocs/op
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rs[2].extra, map[string]float64{"csc-B/session": 800, "hit%": 100, "interval-ms": 10000, "prime-interval-ms": 9000, "redis-rt/op": 0.26, "ttl-s": 30}; !reflect.DeepEqual(got, want) {
		t.Errorf("extra metrics: got %v, want %v", got, want)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	out := b.String()
	for _, want := range []string{
		"### Redis round trips (medians)",
		// I = 11,000 ms (the median of two runs), T = 30 s: 11/41; paired
		// with floor's one run, the first run only.
		"| Sessions/HS256/100000/rand | steady-redis-ttl30s | 2 | 2.20 | 2.00 | 2.00 | 30 | 11000 | 10000 | 0.2800 | 0.268 | 100.0 | 800 |",
		"| Unary/HS256 | steady-redis | 1 | 1.12 | 1.12 | – | – | – | – | 0.0001 | – | – | – |",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| Sessions/HS256/100000/rand | steady |") {
		t.Errorf("steady, without round trips, has a row in the Redis table:\n%s", out)
	}
}

// TestWrite_Mesh checks the mesh cases: steady-jwks judged against floor
// with steady's target, and the mesh table comparing steady-jwks with
// steady and renew-delegated with renew-every, as ratios of the medians
// and paired within a run; HS256, which skips the mesh cases (the skip's
// lines are not results), gets no row there.
func TestWrite_Mesh(t *testing.T) {
	rs, err := parse(strings.NewReader(`BenchmarkUnary/HS256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/steady-2 100 54000 ns/op 10200 B/op 166 allocs/op
--- SKIP: BenchmarkUnary/HS256/steady-jwks
    bench_test.go:123: HS256 has no JWKS (an HMAC secret has no public half); steady-jwks runs for ES256 and EdDSA
BenchmarkUnary/ES256/floor-2 100 50000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/ES256/steady-2 100 54000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/steady-jwks-2 100 56000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/renew-every-2 100 300000 ns/op 28000 B/op 343 allocs/op
BenchmarkUnary/ES256/renew-delegated-2 100 600000 ns/op 53000 B/op 669 allocs/op
BenchmarkUnary/HS256/floor-2 100 100000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/HS256/steady-2 100 108000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/floor-2 100 100000 ns/op 9000 B/op 150 allocs/op
BenchmarkUnary/ES256/steady-2 100 108000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/steady-jwks-2 100 108000 ns/op 10200 B/op 166 allocs/op
BenchmarkUnary/ES256/renew-every-2 100 600000 ns/op 28000 B/op 343 allocs/op
BenchmarkUnary/ES256/renew-delegated-2 100 1500000 ns/op 53000 B/op 669 allocs/op
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rs), 14; got != want {
		t.Fatalf("got %d results, want %d", got, want)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	out := b.String()
	for _, want := range []string{
		"| ES256 | steady-jwks | 2 | 82000 | 1.09 | 1.10 | 10200 | 166 | +16 |",
		"| Unary/ES256 | 1.08 pass | – | – | – | – | +16 MISS | – | – | – | 1.09 pass |",
		"| Unary/HS256 | 1.08 pass | – | – | – | – | +16 MISS | – | – | – | – |",
		"### Mesh: verify-only (JWKS) and delegated renewal against local (medians)",
		// Medians 82,000 / 81,000 and 1,050,000 / 450,000; paired, the
		// medians of (56/54, 108/108) and of (2.0, 2.5).
		"| Unary/ES256 | 1.09 | 1.01 | 1.02 | 6.00 | 14.00 | 2.33 | 2.25 |",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks the line %q; got:\n%s", want, out)
		}
	}
	_, mesh, _ := strings.Cut(out, "### Mesh")
	if strings.Contains(mesh, "| Unary/HS256 |") {
		t.Errorf("HS256, without mesh cases, has a row in the mesh table:\n%s", out)
	}
}

// TestWritePaired: BenchmarkPaired's results get their own table, with the
// median and range of the ratio each run reported and the target judged
// on the median; they appear in no other table.
func TestWritePaired(t *testing.T) {
	const in = `BenchmarkPaired/Unary/HS256/floor-2     	 1000	 70000 ns/op	 70100 floor-ns/op	 0.9986 x-floor
BenchmarkPaired/Unary/HS256/floor-2     	 1000	 71000 ns/op	 70000 floor-ns/op	 1.014 x-floor
BenchmarkPaired/Unary/HS256/steady-2    	 1000	 75000 ns/op	 70000 floor-ns/op	 1.071 x-floor
BenchmarkPaired/Unary/HS256/steady-2    	 1000	 79000 ns/op	 70000 floor-ns/op	 1.129 x-floor
BenchmarkPaired/Unary/HS256/steady-2    	 1000	 76000 ns/op	 70000 floor-ns/op	 1.086 x-floor
BenchmarkPaired/Unary/HS256/renew-every-2	 1000	 150000 ns/op	 100000 middleware-verify-ns/op	 1.55 x-middleware-verify
BenchmarkPaired/Unary/ES256/steady-jwks-2	 1000	 75000 ns/op	 70000 floor-ns/op	 1.07 x-floor
BenchmarkPaired/Unary/ES256/steady-redis-2	 1000	 75000 ns/op	 70000 floor-ns/op	 1.07 x-floor	 0.0001 redis-rt/op
BenchmarkSessionsPaired/HS256/100000/rand/steady-2	 20000	 84000 ns/op	 75000 floor-ns/op	 95.06 hit%	 1.123 x-floor
BenchmarkSessionsPaired/HS256/100000/rand/steady-default-2	 20000	 90000 ns/op	 10.95 hit%	 91000 middleware-verify-ns/op	 0.99 x-middleware-verify
`
	rs, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, summarize(rs))
	out := b.String()
	for _, want := range []string{
		"| Paired/Unary/HS256 | floor | floor | 2 | 1.01 | 1.00–1.01 | – | control (≈ 1.00) |",
		"| Paired/Unary/HS256 | steady | floor | 3 | 1.09 | 1.07–1.13 | – | ≤ 1.10 pass |",
		"| Paired/Unary/HS256 | renew-every | middleware-verify | 1 | 1.55 | 1.55–1.55 | – | ≤ 1.50 MISS |",
		"| SessionsPaired/HS256/100000/rand | steady | floor | 1 | 1.12 | 1.12–1.12 | 95.1 | ≤ 1.10 MISS |",
		"| SessionsPaired/HS256/100000/rand | steady-default | middleware-verify | 1 | 0.99 | 0.99–0.99 | 10.9 | ≤ 1.00 pass |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "BenchmarkPaired (medians)") || strings.Contains(out, "BenchmarkSessionsPaired (medians)") || strings.Count(out, "Paired/") != 7 || strings.Contains(out, "### Targets") {
		t.Errorf("Paired results in the other tables:\n%s", out)
	}
}
