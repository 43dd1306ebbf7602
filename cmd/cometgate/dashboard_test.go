package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// describingRegisterer collects the names of the metrics registered
// through it.
type describingRegisterer struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)

func (r *describingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() {
		defer close(ch)
		c.Describe(ch)
	}()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *describingRegisterer) Unregister(prometheus.Collector) bool { return false }

// The Grafana dashboard in configs/deploy queries only metrics a node
// serves: a renamed metric fails here, not on an operator's empty panel.
func TestGrafanaDashboardQueriesServedMetrics(t *testing.T) {
	reg := &describingRegisterer{names: map[string]bool{}}
	registerMetrics(reg)
	if !reg.names["cometgate_sessions"] || !reg.names["go_goroutines"] {
		t.Fatalf("describing the node's collectors found only %v", reg.names)
	}

	var dash struct {
		Title  string
		Panels []struct {
			Type    string
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Query any
			}
		}
	}
	if err := json.Unmarshal(readDeployFile(t, "grafana/cometgate.json"), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	// A metric name in a query: a name followed by a selector, a range or
	// the end of an aggregation's argument.
	metric := regexp.MustCompile(`\b((?:cometgate|go|process)_[a-z_]+)\b`)
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, m := range metric.FindAllStringSubmatch(expr, -1) {
			name := m[1]
			if !reg.names[name] {
				// Histograms are queried through their series.
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(name, suffix); ok && reg.names[base] {
						name = base
					}
				}
			}
			if !reg.names[name] {
				t.Errorf("%s queries %s, which no node serves", where, m[1])
			}
			used[name] = true
		}
	}
	panels := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		panels++
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			check("variable", q["query"].(string))
		}
	}
	// Every cometgate metric is on the dashboard somewhere.
	for name := range reg.names {
		if strings.HasPrefix(name, "cometgate_") && !used[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
	if panels < 10 {
		t.Errorf("%d panels", panels)
	}
}
