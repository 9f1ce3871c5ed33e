// Command rules-check validates a Prometheus rules file with Prometheus' own parser (rulefmt,
// which parses every expression with the PromQL parser and every template), the way Prometheus
// and promtool load it.
//
// Usage: rules-check <rules file>
//
// On success it prints {"alerts": [...], "records": [...], "metrics": [...]}: the alert and
// recording rule names, and the metric names the expressions select. On failure it prints the
// errors to standard error and exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: rules-check <rules file>")
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	// Unknown fields are errors, as in promtool: a misspelt key would be ignored silently.
	groups, errs := rulefmt.ParseFile(os.Args[1], false, model.UTF8Validation, p, slog.Default())
	if len(errs) > 0 {
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
	alerts := []string{}
	records := []string{}
	metrics := map[string]bool{}
	for _, group := range groups.Groups {
		for _, rule := range group.Rules {
			if rule.Alert != "" {
				alerts = append(alerts, rule.Alert)
			} else {
				records = append(records, rule.Record)
			}
			// rulefmt has parsed every expression already: this cannot fail.
			expr, _ := p.ParseExpr(rule.Expr)
			parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
				if selector, ok := node.(*parser.VectorSelector); ok && selector.Name != "" {
					metrics[selector.Name] = true
				}
				return nil
			})
		}
	}
	names := make([]string, 0, len(metrics))
	for name := range metrics {
		names = append(names, name)
	}
	sort.Strings(names)
	_ = json.NewEncoder(os.Stdout).Encode(map[string][]string{
		"alerts":  alerts,
		"records": records,
		"metrics": names,
	})
}
