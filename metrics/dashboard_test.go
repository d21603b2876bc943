package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatd-dev/chatd/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dashboardPath is the Grafana dashboard shipped in docs/grafana.
const dashboardPath = "../docs/grafana/chatd.json"

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Targets     []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row holds its panels
}

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"` // a string, or {"query": "..."} in newer Grafana
		} `json:"list"`
	} `json:"templating"`
}

var (
	quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	ident  = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	fqName = regexp.MustCompile(`fqName: "([^"]+)"`)
)

// metricNames returns the chatd_, go_ and process_ identifiers in a PromQL expression. String
// literals (label values, label_replace arguments) are removed first.
func metricNames(expr string) []string {
	var names []string
	for _, tok := range ident.FindAllString(quoted.ReplaceAllString(expr, `""`), -1) {
		if strings.HasPrefix(tok, "chatd_") || strings.HasPrefix(tok, "go_") || strings.HasPrefix(tok, "process_") {
			names = append(names, tok)
		}
	}
	return names
}

// recorder is a Registerer that keeps what is registered, so the test can Describe it: a vector
// with no children yet, or a histogram without observations of its labels, is missing from Gather.
type recorder struct {
	*prometheus.Registry
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registry.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
	r.Registry.MustRegister(cs...)
}

// registered is the set of metric family names that chatd's /metrics can serve, made the way
// cmd/chatd does it: metrics.New on a fresh registry.
func registered(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{Registry: prometheus.NewRegistry()}
	metrics.New(rec)
	names := map[string]bool{}
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, c := range rec.collectors {
			c.Describe(descs)
		}
		close(descs)
	}()
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	families, err := rec.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		names[f.GetName()] = true
	}
	// A vector without children is absent from Gather: if this is missing, the Desc parsing above
	// no longer works and the check below would be meaningless.
	if !names["chatd_http_requests_total"] {
		t.Fatalf("chatd_http_requests_total not among the described metrics; Desc.String changed? got %d names", len(names))
	}
	return names
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}
	return d
}

// flatten lists every panel, those inside rows included.
func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

// TestDashboardPanels checks that every panel of the Grafana dashboard has a title, a
// description and at least one query, and that the template variables the queries use exist.
func TestDashboardPanels(t *testing.T) {
	d := loadDashboard(t)
	panels := flatten(d.Panels)
	if len(panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	ids := map[int]string{}
	for _, p := range panels {
		if p.Title == "" {
			t.Errorf("panel %d (%s) has no title", p.ID, p.Type)
		}
		if other, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		for i, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %d has no expr", p.Title, i)
			}
		}
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["instance"] != "query" {
		t.Errorf("want a datasource variable and an instance query variable, got %v", vars)
	}
}

// TestDashboardMetricsExist fails when the dashboard queries a metric chatd does not register,
// e.g. after a metric is renamed in metrics.go.
func TestDashboardMetricsExist(t *testing.T) {
	d := loadDashboard(t)
	var exprs []string
	for _, p := range flatten(d.Panels) {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		var s string
		var q struct {
			Query string `json:"query"`
		}
		switch {
		case json.Unmarshal(v.Query, &s) == nil:
			exprs = append(exprs, s)
		case json.Unmarshal(v.Query, &q) == nil:
			exprs = append(exprs, q.Query)
		}
	}

	known := registered(t)
	used := map[string]bool{}
	var missing []string
	for _, e := range exprs {
		for _, name := range metricNames(e) {
			if used[name] {
				continue
			}
			used[name] = true
			if known[name] {
				continue
			}
			// A histogram's or summary's series carry a suffix its family name does not.
			if slices.ContainsFunc([]string{"_bucket", "_sum", "_count"}, func(suffix string) bool {
				base, ok := strings.CutSuffix(name, suffix)
				return ok && known[base]
			}) {
				continue
			}
			missing = append(missing, name)
		}
	}
	if len(used) == 0 {
		t.Fatal("found no metric names in the dashboard's queries")
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("%s uses metrics chatd does not register: %s", dashboardPath, strings.Join(missing, ", "))
	}
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (route, le) (rate(chatd_http_request_duration_seconds_bucket{instance=~"$instance", route!="/chatd_x"}[$__rate_interval]))) / go_goroutines`)
	want := []string{"chatd_http_request_duration_seconds_bucket", "go_goroutines"}
	if !slices.Equal(got, want) {
		t.Errorf("metricNames = %v, want %v", got, want)
	}
}

// Any token is a valid HTTP method: one that is not a standard method must not become a label
// value of its own, or a client could grow the process's series (and memory) without bound.
func TestRequestMethodsAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	for _, method := range []string{"GET", "POST", "M1", "M2", "BREW"} {
		m.Request("/healthz", method, 405, time.Millisecond)
	}
	if got := testutil.CollectAndCount(m.HTTPRequests); got != 3 {
		t.Fatalf("%d request series, want 3 (GET, POST, other)", got)
	}
	if got := testutil.ToFloat64(m.HTTPRequests.WithLabelValues("/healthz", "other", "405")); got != 3 {
		t.Fatalf("%v requests counted as other, want 3", got)
	}
}
