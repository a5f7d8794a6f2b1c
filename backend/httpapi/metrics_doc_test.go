package httpapi

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// operationsFile documents every metric /metrics serves.
const operationsFile = "../../docs/OPERATIONS.md"

// repoRoot is where the metric definitions are looked for.
const repoRoot = "../.."

// metricDef is one metric defined in the code.
type metricDef struct {
	name   string
	kind   string // counter, gauge, histogram or summary
	labels []string
	pos    string
}

// TestOperationsDocumentsMetrics fails when a metric defined in the code
// (any prometheus.New{Counter,Gauge,Histogram,Summary}{,Vec,Func} call
// outside tests) is not in a table row of docs/OPERATIONS.md naming its
// type and every label, or the document names an ecowatt_ metric the code
// no longer defines. Metrics are found in the source rather than by
// gathering a registry, because a labelled metric appears in a gather only
// after its first observation.
func TestOperationsDocumentsMetrics(t *testing.T) {
	defs := codeMetrics(t)
	raw, err := os.ReadFile(operationsFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var rows []string
	for line := range strings.Lines(doc) {
		if strings.HasPrefix(strings.TrimSpace(line), "|") {
			rows = append(rows, line)
		}
	}

	t.Run("found", func(t *testing.T) {
		for _, want := range []string{"ecowatt_devices_online", "ecowatt_broker_clients_connected"} {
			if _, ok := defs[want]; !ok {
				t.Errorf("metric %s not found in the source; is the scanner still reading the definitions?", want)
			}
		}
	})
	t.Run("documented", func(t *testing.T) {
		for _, name := range sortedKeys(defs) {
			d := defs[name]
			i := slices.IndexFunc(rows, func(r string) bool { return strings.Contains(r, "`"+name+"`") })
			if i < 0 {
				t.Errorf("%s (%s %s) is not in a table row of %s", name, d.kind, d.pos, operationsFile)
				continue
			}
			row := rows[i]
			if !regexp.MustCompile(`\b` + d.kind + `\b`).MatchString(row) {
				t.Errorf("%s: the row in %s does not say it is a %s:\n%s", name, operationsFile, d.kind, row)
			}
			for _, l := range d.labels {
				if !strings.Contains(row, "`"+l+"`") {
					t.Errorf("%s: the row in %s does not name its label `%s`:\n%s", name, operationsFile, l, row)
				}
			}
		}
	})
	t.Run("defined", func(t *testing.T) {
		seen := map[string]bool{}
		for _, m := range regexp.MustCompile("`(ecowatt_[a-z0-9_]+)(\\*?)").FindAllStringSubmatch(doc, -1) {
			name := m[1]
			if _, ok := defs[name]; ok || seen[name] {
				continue
			}
			seen[name] = true
			if m[2] == "*" { // a family: ecowatt_broker_*
				if !slices.ContainsFunc(sortedKeys(defs), func(d string) bool { return strings.HasPrefix(d, name) }) {
					t.Errorf("%s names metrics %s*, and the code defines none", operationsFile, name)
				}
				continue
			}
			base := name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suf)
			}
			if d, ok := defs[base]; ok && (d.kind == "histogram" || d.kind == "summary") {
				continue
			}
			t.Errorf("%s names metric %s, which the code does not define", operationsFile, name)
		}
	})
}

var metricCtor = regexp.MustCompile(`^New(Counter|Gauge|Histogram|Summary)(Vec|Func)?$`)

// codeMetrics returns the metrics defined by non-test Go files under
// repoRoot, by name. A definition the scanner cannot read (a name that is
// not a literal) fails the test instead of being skipped.
func codeMetrics(t *testing.T) map[string]metricDef {
	t.Helper()
	out := map[string]metricDef{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != repoRoot && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		for _, m := range fileMetrics(t, path) {
			if prev, dup := out[m.name]; dup && prev.pos != m.pos {
				t.Errorf("%s: metric %s also defined at %s", m.pos, m.name, prev.pos)
			}
			out[m.name] = m
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fileMetrics(t *testing.T, path string) []metricDef {
	fset := gotoken.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return nil
	}
	var out []metricDef
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		m := metricCtor.FindStringSubmatch(sel.Sel.Name)
		if m == nil {
			return true
		}
		opts, ok := call.Args[0].(*ast.CompositeLit)
		if !ok || !isPromOpts(opts.Type) {
			return true
		}
		d := metricDef{kind: strings.ToLower(m[1]), pos: fset.Position(call.Pos()).String()}
		var parts [3]string // namespace, subsystem, name
		for _, e := range opts.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			key, _ := kv.Key.(*ast.Ident)
			if key == nil {
				continue
			}
			i := slices.Index([]string{"Namespace", "Subsystem", "Name"}, key.Name)
			switch {
			case i >= 0:
				s, ok := stringLit(kv.Value)
				if !ok {
					t.Errorf("%s: metric %s is not a string literal; write it as one so the docs test sees it", d.pos, key.Name)
					return true
				}
				parts[i] = s
			case key.Name == "ConstLabels":
				if cl, ok := kv.Value.(*ast.CompositeLit); ok {
					for _, e := range cl.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok {
							if s, ok := stringLit(kv.Key); ok {
								d.labels = append(d.labels, s)
							}
						}
					}
				}
			}
		}
		var nonEmpty []string
		for _, p := range parts {
			if p != "" {
				nonEmpty = append(nonEmpty, p)
			}
		}
		d.name = strings.Join(nonEmpty, "_")
		if m[2] == "Vec" && len(call.Args) > 1 {
			ls, ok := call.Args[1].(*ast.CompositeLit)
			if !ok {
				t.Errorf("%s: labels of %s are not a []string literal", d.pos, d.name)
			} else {
				for _, e := range ls.Elts {
					if s, ok := stringLit(e); ok {
						d.labels = append(d.labels, s)
					} else {
						t.Errorf("%s: a label of %s is not a string literal", d.pos, d.name)
					}
				}
			}
		}
		out = append(out, d)
		return true
	})
	return out
}

// isPromOpts reports whether e is prometheus.{Counter,Gauge,Histogram,Summary}Opts.
func isPromOpts(e ast.Expr) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == "prometheus" && strings.HasSuffix(sel.Sel.Name, "Opts")
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != gotoken.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}
