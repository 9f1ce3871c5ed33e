// Command argocd-lua runs Argo CD resource customizations (health checks and resource actions)
// the way Argo CD runs them: with gopher-lua, `obj` set to the resource, and the test files of
// Argo CD's own layout (health_test.yaml, actions/action_test.yaml) as the expectations.
//
// Usage: argocd-lua <resource_customizations folder>
//
// It prints one JSON object per case ({"kind", "case", "passed", "detail"}) and exits 1 when a
// case fails, 2 when the folder cannot be read.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// fixedNow is the clock the scripts see, so that an action stamping the current time has a
// stable expected output.
var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type healthTests struct {
	Tests []struct {
		HealthStatus struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"healthStatus"`
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string `json:"inputPath"`
		Result    []struct {
			Name     string `json:"name"`
			Disabled bool   `json:"disabled"`
		} `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action             string `json:"action"`
		InputPath          string `json:"inputPath"`
		ExpectedOutputPath string `json:"expectedOutputPath"`
	} `json:"actionTests"`
}

type result struct {
	Kind   string `json:"kind"`
	Case   string `json:"case"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua <resource_customizations folder>")
		os.Exit(2)
	}
	kinds, err := filepath.Glob(filepath.Join(os.Args[1], "*", "*"))
	if err != nil || len(kinds) == 0 {
		fmt.Fprintf(os.Stderr, "no <group>/<kind> folders in %s\n", os.Args[1])
		os.Exit(2)
	}
	sort.Strings(kinds)
	var results []result
	for _, dir := range kinds {
		kind := filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)
		results = append(results, runHealth(kind, dir)...)
		results = append(results, runActions(kind, dir)...)
	}
	failed := false
	out := json.NewEncoder(os.Stdout)
	for _, r := range results {
		failed = failed || !r.Passed
		_ = out.Encode(r)
	}
	if failed {
		os.Exit(1)
	}
}

func runHealth(kind, dir string) []result {
	var tests healthTests
	if err := readYAML(filepath.Join(dir, "health_test.yaml"), &tests); err != nil {
		return []result{{Kind: kind, Case: "health_test.yaml", Detail: err.Error()}}
	}
	var results []result
	for _, t := range tests.Tests {
		r := result{Kind: kind, Case: "health " + t.InputPath}
		got, err := run(filepath.Join(dir, "health.lua"), filepath.Join(dir, t.InputPath))
		if err != nil {
			r.Detail = err.Error()
		} else {
			status, _ := got.(map[string]any)
			want := map[string]any{"status": t.HealthStatus.Status, "message": t.HealthStatus.Message}
			have := map[string]any{"status": status["status"], "message": stringOr(status["message"])}
			r.Passed = reflect.DeepEqual(have, want)
			if !r.Passed {
				r.Detail = fmt.Sprintf("got %v, want %v", have, want)
			}
		}
		results = append(results, r)
	}
	return results
}

func runActions(kind, dir string) []result {
	actions := filepath.Join(dir, "actions")
	if _, err := os.Stat(actions); err != nil {
		return nil
	}
	var tests actionTests
	if err := readYAML(filepath.Join(actions, "action_test.yaml"), &tests); err != nil {
		return []result{{Kind: kind, Case: "action_test.yaml", Detail: err.Error()}}
	}
	var results []result
	for _, t := range tests.DiscoveryTests {
		r := result{Kind: kind, Case: "discovery " + t.InputPath}
		got, err := run(filepath.Join(actions, "discovery.lua"), filepath.Join(actions, t.InputPath))
		if err != nil {
			r.Detail = err.Error()
		} else {
			want := map[string]any{}
			for _, a := range t.Result {
				want[a.Name] = map[string]any{"disabled": a.Disabled}
			}
			have := map[string]any{}
			discovered, _ := got.(map[string]any)
			for name, options := range discovered {
				disabled, _ := options.(map[string]any)["disabled"].(bool)
				have[name] = map[string]any{"disabled": disabled}
			}
			r.Passed = reflect.DeepEqual(have, want)
			if !r.Passed {
				r.Detail = fmt.Sprintf("got %v, want %v", have, want)
			}
		}
		results = append(results, r)
	}
	for _, t := range tests.ActionTests {
		r := result{Kind: kind, Case: "action " + t.Action + " " + t.InputPath}
		script := filepath.Join(actions, t.Action, "action.lua")
		got, err := run(script, filepath.Join(actions, t.InputPath))
		var want any
		if err == nil {
			err = readYAML(filepath.Join(actions, t.ExpectedOutputPath), &want)
		}
		if err != nil {
			r.Detail = err.Error()
		} else {
			r.Passed = reflect.DeepEqual(got, want)
			if !r.Passed {
				have, _ := json.Marshal(got)
				expected, _ := json.Marshal(want)
				r.Detail = fmt.Sprintf("got %s, want %s", have, expected)
			}
		}
		results = append(results, r)
	}
	return results
}

// run executes a script with the global `obj` read from a YAML file and returns what the script
// returned, as JSON-like Go values.
func run(script, input string) (any, error) {
	var obj any
	if err := readYAML(input, &obj); err != nil {
		return nil, err
	}
	L := newState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoFile(script); err != nil {
		return nil, fmt.Errorf("%s: %w", script, err)
	}
	return fromLua(L.Get(-1)), nil
}

// newState opens the libraries Argo CD opens for resource customizations, with `os` limited to
// its clock functions as in Argo CD, and the clock fixed.
func newState() *lua.LState {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
		{lua.CoroutineLibName, lua.OpenCoroutine},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.PreloadModule("os", func(L *lua.LState) int {
		mod := L.NewTable()
		L.SetField(mod, "time", L.NewFunction(func(L *lua.LState) int {
			L.Push(lua.LNumber(fixedNow.Unix()))
			return 1
		}))
		L.SetField(mod, "date", L.NewFunction(osDate))
		L.Push(mod)
		return 1
	})
	return L
}

// osDate supports the forms resource actions use: `os.date("!<strftime format>"[, time])`.
func osDate(L *lua.LState) int {
	format := L.OptString(1, "%c")
	when := fixedNow
	if L.GetTop() >= 2 {
		when = time.Unix(int64(L.CheckNumber(2)), 0)
	}
	if len(format) > 0 && format[0] == '!' {
		format = format[1:]
		when = when.UTC()
	}
	L.Push(lua.LString(strftime(format, when)))
	return 1
}

func strftime(format string, t time.Time) string {
	out := make([]byte, 0, len(format)+16)
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			out = append(out, format[i])
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			out = fmt.Appendf(out, "%04d", t.Year())
		case 'm':
			out = fmt.Appendf(out, "%02d", int(t.Month()))
		case 'd':
			out = fmt.Appendf(out, "%02d", t.Day())
		case 'H':
			out = fmt.Appendf(out, "%02d", t.Hour())
		case 'M':
			out = fmt.Appendf(out, "%02d", t.Minute())
		case 'S':
			out = fmt.Appendf(out, "%02d", t.Second())
		default:
			out = append(out, '%', format[i])
		}
	}
	return string(out)
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		table := L.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(L, item))
		}
		return table
	case []any:
		table := L.NewTable()
		for _, item := range v {
			table.Append(toLua(L, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

// fromLua turns a table with keys 1..n into a list and any other table into a map, as Argo CD
// does when it reads back a resource an action returned.
func fromLua(value lua.LValue) any {
	switch v := value.(type) {
	case *lua.LTable:
		if n := v.MaxN(); n > 0 {
			list := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				list = append(list, fromLua(v.RawGetInt(i)))
			}
			return list
		}
		object := map[string]any{}
		v.ForEach(func(key, item lua.LValue) {
			object[key.String()] = fromLua(item)
		})
		return object
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	default:
		return nil
	}
}

func stringOr(value any) string {
	s, _ := value.(string)
	return s
}
