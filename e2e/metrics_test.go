package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/slidejwt/slidejwt/interceptor"
)

// listeningMetrics matches the metrics URL that the server's "listening"
// line names with --metrics-addr.
var listeningMetrics = regexp.MustCompile(`(?m)listening.*?\bmetrics"?[=:]"?(http://[^\s"]+)`)

// dashboardFile is the Grafana dashboard over the example server's
// metrics, from this package's folder.
var dashboardFile = filepath.Join("..", "examples", "grafana", "slidejwt.json")

const echoMethod = "demo.v1.DemoService/Echo"

// TestMetrics: the example server started with --metrics-addr serves
// /metrics in the Prometheus format; after a login, three Echo calls
// (the first renewed), one call with a tampered token and one refresh,
// the scrape counts exactly those, names no token, subject or session,
// and the server's log lines name the same attribute values as the
// series. The dashboard in examples/grafana references only metrics and
// labels that this scrape has.
func TestMetrics(t *testing.T) {
	t.Parallel()
	srv := startServer(t, append(slices.Clone(shortFlags), "--metrics-addr", "127.0.0.1:0")...)
	m := listeningMetrics.FindStringSubmatch(srv.stderr.String())
	if m == nil {
		t.Fatalf("the listening line names no metrics URL:\n%s", srv.stderr)
	}
	url := m[1]

	pair := srv.login(t)
	h, err := interceptor.NewTokenHolder(pair.GetAccessToken(), interceptor.AllowInsecureTransport())
	if err != nil {
		t.Fatal(err)
	}
	sid := h.SessionID()

	const calls = 3
	nextSecond(pair, 3*time.Second)
	var trailer metadata.MD
	if _, err := srv.echoWith(t, pair.GetAccessToken(), grpc.Trailer(&trailer)); err != nil {
		t.Fatalf("Echo: %v", err)
	}
	renewed := trailer.Get(interceptor.DefaultRenewalHeader)
	see(renewed...)
	if len(renewed) != 1 {
		t.Fatalf("the first Echo got %d renewed tokens, want 1", len(renewed))
	}
	for i := 1; i < calls; i++ {
		var tr metadata.MD
		if _, err := srv.echoWith(t, renewed[0], grpc.Trailer(&tr)); err != nil {
			t.Fatalf("Echo %d: %v", i+1, err)
		}
		see(tr.Get(interceptor.DefaultRenewalHeader)...)
	}
	bad := tamper(renewed[0])
	see(bad)
	_, err = srv.echoWith(t, bad)
	wantReason(t, "Echo with a tampered token", err, interceptor.ReasonTokenInvalid)
	if _, err := srv.refresh(t, pair.GetRefreshToken()); err != nil {
		t.Fatalf("Refresh: %v", err)
	}

	body := scrape(t, url)
	if what := leakedToken(body); what != "" {
		t.Errorf("the scrape contains %s", what)
	}
	for _, s := range []string{"eyJ", "alice", sid} {
		if strings.Contains(body, s) {
			t.Errorf("the scrape contains %q (a JWT, the subject or the session id)", s)
		}
	}
	ss, err := parseScrape(body)
	if err != nil {
		t.Fatalf("parse the scrape: %v\n%s", err, body)
	}

	echo := map[string]string{"rpc_method": echoMethod, "rpc_system_name": "grpc"}
	exact := []struct {
		name   string
		labels map[string]string // the series' slidejwt labels; every series of name must be listed
		want   float64
	}{
		{"slidejwt_server_session_starts_total", nil, 1},
		{"slidejwt_server_calls_total", echo, calls},
		{"slidejwt_server_rejections_total", with(echo, "slidejwt_reason", "TOKEN_INVALID"), 1},
		{"slidejwt_server_refreshes_total", map[string]string{"slidejwt_refresh_outcome": "ok"}, 1},
		{"slidejwt_server_store_duration_seconds_count", map[string]string{"slidejwt_store_operation": "create"}, 1},
		{"slidejwt_server_store_duration_seconds_count", map[string]string{"slidejwt_store_operation": "rotate"}, 1},
		// Every call that presented a token is authenticated once, the
		// rejected one too; every call that was let through and the
		// refresh ask the store whether the session is live.
		{"slidejwt_server_store_duration_seconds_count", map[string]string{"slidejwt_store_operation": "is_revoked"}, calls + 1},
	}
	for _, e := range exact {
		if got, n := ss.value(e.name, e.labels); n != 1 || got != e.want {
			t.Errorf("%s%v = %v in %d series, want %v in 1", e.name, e.labels, got, n, e.want)
		}
	}
	// No other series of these: nothing counted twice, no other reason.
	for _, name := range []string{"slidejwt_server_session_starts_total", "slidejwt_server_calls_total",
		"slidejwt_server_rejections_total", "slidejwt_server_refreshes_total", "slidejwt_server_store_duration_seconds_count"} {
		n := 0
		for _, e := range exact {
			if e.name == name {
				n++
			}
		}
		if got := len(ss.named(name)); got != n {
			t.Errorf("%s has %d series, want %d:\n%s", name, got, n, ss.dump(name))
		}
	}
	// The first call was renewed; the others may be (every call is due
	// for a renewal, which is minted once its exp would be a second later).
	if got, _ := ss.value("slidejwt_server_renewals_total", echo); got < 1 || got > calls {
		t.Errorf("slidejwt_server_renewals_total = %v, want 1 to %d", got, calls)
	}
	if got := ss.sum("slidejwt_server_auth_duration_seconds_count"); got != calls+1 {
		t.Errorf("authentications counted = %v, want %d (the calls and the rejection)", got, calls+1)
	}
	if got := ss.sum("slidejwt_server_cache_lookups_total"); got != calls+1 {
		t.Errorf("cache lookups = %v, want %d (every token that reached verification)", got, calls+1)
	}

	// The log lines name the same attributes, with the same values.
	wantLines := []string{
		`msg=rejected rpc.method=` + echoMethod + ` slidejwt.reason=TOKEN_INVALID`,
		`msg=refreshed slidejwt.refresh.outcome=ok`,
		`msg=renewed rpc.method=` + echoMethod,
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, want := range wantLines {
		for !strings.Contains(srv.stderr.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("the server logged no line with %q:\n%s", want, srv.stderr)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	t.Run("dashboard", func(t *testing.T) { checkDashboard(t, ss) })
}

// checkDashboard checks examples/grafana/slidejwt.json: valid JSON, a
// Grafana dashboard with panels, each with PromQL expressions, which
// together cover calls, rejections, renewals, refreshes, cache lookups and
// the auth and store latencies; every metric an expression names is in
// the scrape ss, and every label it matches or groups by is on a series
// of those metrics (or is job or instance, which Prometheus adds when it
// scrapes).
func checkDashboard(t *testing.T, ss scraped) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(raw) {
		t.Fatalf("%s is not valid JSON", dashboardFile)
	}
	var d struct {
		Title         string `json:"title"`
		UID           string `json:"uid"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Fatalf("%s: title %q, uid %q, schemaVersion %d, %d panels; want all set", dashboardFile, d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if p.Title == "" || p.Type == "" || len(p.Targets) == 0 {
			t.Errorf("panel %q (type %q) has %d targets; want a title, a type and a target", p.Title, p.Type, len(p.Targets))
		}
		for _, tg := range p.Targets {
			metrics, labels := promqlNames(tg.Expr)
			if len(metrics) == 0 {
				t.Errorf("panel %q: expression %q names no metric", p.Title, tg.Expr)
			}
			checkNames(t, ss, fmt.Sprintf("panel %q", p.Title), metrics, labels)
			for _, m := range metrics {
				used[m] = true
			}
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	for _, v := range d.Templating.List {
		if v.Definition == "" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %q: definition %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		checkNames(t, ss, fmt.Sprintf("variable %q", v.Name), []string{m[1]}, []string{m[2]})
	}
	for _, want := range []string{
		"slidejwt_server_calls_total", "slidejwt_server_rejections_total", "slidejwt_server_renewals_total",
		"slidejwt_server_refreshes_total", "slidejwt_server_cache_lookups_total",
		"slidejwt_server_auth_duration_seconds_bucket", "slidejwt_server_store_duration_seconds_bucket",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}

// checkNames fails the test for each metric that the scrape lacks and
// each label that no series of the metrics carries.
func checkNames(t *testing.T, ss scraped, where string, metrics, labels []string) {
	t.Helper()
	for _, m := range metrics {
		if len(ss.named(m)) == 0 {
			t.Errorf("%s: metric %s is not in the scrape", where, m)
		}
	}
	for _, l := range labels {
		if l == "job" || l == "instance" {
			continue // added by Prometheus when it scrapes
		}
		found := false
		for _, m := range metrics {
			for _, s := range ss.named(m) {
				_, ok := s.labels[l]
				found = found || ok
			}
		}
		if !found {
			t.Errorf("%s: label %s is on no series of %v", where, l, metrics)
		}
	}
}

// promqlNames returns the metric names and the label names (in matchers
// and in by/without/on/ignoring clauses) of a PromQL expression: enough
// PromQL for a dashboard's queries (no subqueries of subqueries, no
// metric names quoted in braces).
func promqlNames(expr string) (metrics, labels []string) {
	// Grafana's variables ($__rate_interval, ${datasource}) and strings.
	s := regexp.MustCompile(`\$\{?\w+\}?`).ReplaceAllString(expr, "")
	s = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(s, `""`)
	for _, m := range regexp.MustCompile(`\{([^}]*)\}`).FindAllStringSubmatch(s, -1) {
		for _, l := range regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)`).FindAllStringSubmatch(m[1], -1) {
			labels = append(labels, l[1])
		}
	}
	s = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`).ReplaceAllString(s, " ")
	grouping := regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	for _, m := range grouping.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	s = grouping.ReplaceAllString(s, " ")
	keywords := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}
	ident := regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?`)
	for _, loc := range ident.FindAllStringSubmatchIndex(s, -1) {
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // part of a number such as 1e-3
		}
		name := s[loc[2]:loc[3]]
		if loc[4] >= 0 || keywords[strings.ToLower(name)] {
			continue // a function, or a keyword
		}
		metrics = append(metrics, name)
	}
	return metrics, labels
}

// sample is one line of a scrape: a series and its value.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scraped is a parsed scrape.
type scraped []sample

// named returns the samples of metric name.
func (ss scraped) named(name string) []sample {
	var out []sample
	for _, s := range ss {
		if s.name == name {
			out = append(out, s)
		}
	}
	return out
}

// value returns the sum of the samples of name whose labels, other than
// OpenTelemetry's scope labels, are exactly labels, and how many there
// were.
func (ss scraped) value(name string, labels map[string]string) (float64, int) {
	var v float64
	n := 0
	for _, s := range ss.named(name) {
		own := map[string]string{}
		for k, val := range s.labels {
			if !strings.HasPrefix(k, "otel_scope_") {
				own[k] = val
			}
		}
		if len(own) != len(labels) {
			continue
		}
		match := true
		for k, want := range labels {
			match = match && own[k] == want
		}
		if match {
			v += s.value
			n++
		}
	}
	return v, n
}

// sum returns the sum of every sample of name.
func (ss scraped) sum(name string) float64 {
	var v float64
	for _, s := range ss.named(name) {
		v += s.value
	}
	return v
}

// dump formats the samples of name for a failure message.
func (ss scraped) dump(name string) string {
	var b strings.Builder
	for _, s := range ss.named(name) {
		fmt.Fprintf(&b, "  %v %v\n", s.labels, s.value)
	}
	return b.String()
}

// with returns a copy of m with k set to v.
func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for kk, vv := range m {
		out[kk] = vv
	}
	return out
}

// scrape GETs url and returns the body, failing the test unless it is a
// 200 in the Prometheus text format.
func scrape(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %s, Content-Type %q; want 200 and the text format", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	return string(body)
}

// parseScrape parses the Prometheus text exposition format: one sample a
// line, `name{label="value",...} value [timestamp]`, and # comments.
func parseScrape(body string) (scraped, error) {
	var ss scraped
	for i, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
		ss = append(ss, s)
	}
	return ss, nil
}

func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.name, line = line[:end], line[end:]
	if strings.HasPrefix(line, "{") {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, ", ")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, `="`)
			if eq <= 0 {
				return s, fmt.Errorf("bad label")
			}
			name := line[:eq]
			line = line[eq+2:]
			var v strings.Builder
			closed := false
			for j := 0; j < len(line); j++ {
				c := line[j]
				if c == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(line[j])
					}
					continue
				}
				if c == '"' {
					line, closed = line[j+1:], true
					break
				}
				v.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("unterminated label value")
			}
			s.labels[name] = v.String()
		}
	}
	f := strings.Fields(line)
	if len(f) < 1 || len(f) > 2 {
		return s, fmt.Errorf("want a value and an optional timestamp")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}

// TestPromqlNames: the dashboard check finds metric and label names and
// nothing else: no function, keyword, number, variable or label value.
func TestPromqlNames(t *testing.T) {
	tests := []struct {
		expr            string
		metrics, labels []string
	}{
		{`sum by (rpc_method) (rate(a_total{job=~"$job"}[$__rate_interval]))`, []string{"a_total"}, []string{"job", "rpc_method"}},
		{`sum(rate(a_total{r="hit", q!~"x,y=z"}[5m])) / sum(rate(a_total[5m])) > bool 1e-3`, []string{"a_total", "a_total"}, []string{"r", "q"}},
		{`histogram_quantile(0.99, sum without (instance) (rate(h_seconds_bucket{}[1m]))) or on (le) b:rule`, []string{"h_seconds_bucket", "b:rule"}, []string{"instance", "le"}},
	}
	for _, tt := range tests {
		m, l := promqlNames(tt.expr)
		slices.Sort(l)
		want := slices.Clone(tt.labels)
		slices.Sort(want)
		if !slices.Equal(m, tt.metrics) || !slices.Equal(l, want) {
			t.Errorf("promqlNames(%q) = %q, %q; want %q, %q", tt.expr, m, l, tt.metrics, want)
		}
	}
}

// TestParseSample: label values with escapes, and values of every form.
func TestParseSample(t *testing.T) {
	s, err := parseSample(`m_total{a="x\"y",b="1\\2\n",c=""} +Inf 1700000000000`)
	if err != nil {
		t.Fatal(err)
	}
	if s.name != "m_total" || s.labels["a"] != `x"y` || s.labels["b"] != "1\\2\n" || s.labels["c"] != "" || len(s.labels) != 3 || s.value <= 1e308 {
		t.Errorf("got %+v", s)
	}
	if s, err := parseSample(`up 1`); err != nil || s.name != "up" || s.value != 1 || len(s.labels) != 0 {
		t.Errorf("up 1: %+v, %v", s, err)
	}
	for _, bad := range []string{`{a="b"} 1`, `m{a="b} 1`, `m{a=b} 1`, `m x`, `m`} {
		if _, err := parseSample(bad); err == nil {
			t.Errorf("parseSample(%q) succeeded, want an error", bad)
		}
	}
}
