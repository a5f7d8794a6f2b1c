package httpapi

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// openAPIFile is the API description the consistency test checks.
const openAPIFile = "../../docs/openapi.yaml"

// routeSources are the files whose ServeMux registrations make up the HTTP
// surface of `ecowatt serve`: the API (routes.go) and the external broker's
// auth callbacks, mounted under /mqtt/ by cmd/ecowatt in external broker
// mode.
var routeSources = []string{
	"routes.go",
	"../../broker/authhttp/authhttp.go",
}

// undocumented are the registered patterns the document leaves out on
// purpose, with the reason. Nothing else may be missing.
var undocumented = map[string]string{
	"GET /{$}":     "the dashboard page (HTML)",
	"GET /static/": "the dashboard's assets",
	"/api/":        "catch-all: the admin check in front of /api/ and the JSON 404 for unknown API routes",
}

// mountSources are the files of `ecowatt serve` that may put handlers in
// front of NewServer's; mounts lists what they may mount. A new mount
// fails the test until its routes are added to routeSources (or here).
var (
	mountSources = []string{"../../cmd/ecowatt/serve.go", "../../cmd/ecowatt/scale_serve.go"}
	mounts       = map[string]string{
		"/mqtt/": "broker/authhttp (in routeSources)",
		"/":      "NewServer (routes.go)",
	}
)

// openAPIMethods are the operation keys of an OpenAPI path item.
var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPIMatchesRoutes fails when a route is registered that
// docs/openapi.yaml lacks, or the document describes one that is not
// registered. Routes are read from the source (go/ast): ServeMux cannot
// list its patterns.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	registered := registeredRoutes(t)
	doc := loadOpenAPI(t)
	documented := map[string]string{} // normalised "METHOD /path" -> as written
	for path, item := range doc.Paths {
		for _, m := range openAPIMethods {
			if _, ok := item[m]; ok {
				documented[normaliseRoute(strings.ToUpper(m)+" "+path)] = strings.ToUpper(m) + " " + path
			}
		}
	}

	t.Run("sources", func(t *testing.T) {
		// A parser that sees nothing would make the other checks vacuous.
		for _, want := range []string{"GET /healthz", "GET /api/v1/devices", "POST /mqtt/emqx/authn"} {
			if _, ok := registered[normaliseRoute(want)]; !ok {
				t.Errorf("route %q not found in %v; is the parser still reading the registrations?", want, routeSources)
			}
		}
	})
	t.Run("documented", func(t *testing.T) {
		for _, k := range sortedKeys(registered) {
			if _, ok := documented[k]; !ok {
				t.Errorf("route %s (%s) is registered but missing from %s", registered[k], k, openAPIFile)
			}
		}
	})
	t.Run("registered", func(t *testing.T) {
		for _, k := range sortedKeys(documented) {
			if _, ok := registered[k]; !ok {
				t.Errorf("%s describes %s, which no source in %v registers", openAPIFile, documented[k], routeSources)
			}
		}
	})
	t.Run("mounts", func(t *testing.T) {
		for _, src := range mountSources {
			for _, p := range parsePatterns(t, src, false) {
				_, path, hasMethod := strings.Cut(p.pattern, " ")
				if !hasMethod {
					path = p.pattern
				}
				if !strings.HasPrefix(path, "/") {
					continue // not an HTTP pattern
				}
				if _, ok := mounts[p.pattern]; !ok {
					t.Errorf("%s: %q is mounted in front of the API; add the file that registers its routes to routeSources and %q to mounts", p.pos, p.pattern, p.pattern)
				}
			}
		}
	})
	t.Run("exclusions", func(t *testing.T) {
		// An exclusion for a pattern that is gone is stale.
		seen := map[string]bool{}
		for _, src := range routeSources {
			for _, p := range parsePatterns(t, src, true) {
				seen[p.pattern] = true
			}
		}
		for p := range undocumented {
			if !seen[p] {
				t.Errorf("undocumented lists %q, which is no longer registered; remove it", p)
			}
		}
	})
}

// TestOpenAPIWellFormed checks what a route comparison cannot: every path
// parameter is declared, every $ref resolves, and operation IDs are
// unique and every operation has responses.
func TestOpenAPIWellFormed(t *testing.T) {
	raw, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		t.Fatalf("%s: %v", openAPIFile, err)
	}
	doc := loadOpenAPI(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi: %q, want 3.x", doc.OpenAPI)
	}

	t.Run("refs", func(t *testing.T) {
		walkRefs(tree, func(ref string) {
			if _, ok := resolveRef(tree, ref); !ok {
				t.Errorf("$ref %q does not resolve", ref)
			}
		})
	})
	t.Run("path parameters", func(t *testing.T) {
		for _, path := range sortedKeys(doc.Paths) {
			item := doc.Paths[path]
			want := pathParams(path)
			for _, m := range openAPIMethods {
				op, ok := item[m].(map[string]any)
				if !ok {
					continue
				}
				got := map[string]bool{}
				for _, ps := range []any{item["parameters"], op["parameters"]} {
					list, _ := ps.([]any)
					for _, p := range list {
						pm, _ := p.(map[string]any)
						if ref, ok := pm["$ref"].(string); ok {
							r, _ := resolveRef(tree, ref)
							pm, _ = r.(map[string]any)
						}
						if pm["in"] == "path" {
							got[pm["name"].(string)] = true
						}
					}
				}
				for _, name := range want {
					if !got[name] {
						t.Errorf("%s %s: path parameter %q is not declared", strings.ToUpper(m), path, name)
					}
				}
				for name := range got {
					if !slices.Contains(want, name) {
						t.Errorf("%s %s: declares path parameter %q, which the path lacks", strings.ToUpper(m), path, name)
					}
				}
			}
		}
	})
	t.Run("operations", func(t *testing.T) {
		ids := map[string]string{}
		for _, path := range sortedKeys(doc.Paths) {
			for _, m := range openAPIMethods {
				op, ok := doc.Paths[path][m].(map[string]any)
				if !ok {
					continue
				}
				where := strings.ToUpper(m) + " " + path
				id, _ := op["operationId"].(string)
				if id == "" {
					t.Errorf("%s: no operationId", where)
				} else if prev, dup := ids[id]; dup {
					t.Errorf("%s: operationId %q already used by %s", where, id, prev)
				}
				ids[id] = where
				if rs, _ := op["responses"].(map[string]any); len(rs) == 0 {
					t.Errorf("%s: no responses", where)
				}
				// API routes answer errors with the JSON error body; the
				// probes and the broker callbacks have their own forms.
				if strings.HasPrefix(path, "/api/") {
					if _, ok := op["responses"].(map[string]any)["401"]; !ok {
						t.Errorf("%s: no 401 response (every /api/ route needs the admin token)", where)
					}
				}
			}
		}
	})
}

// openAPIDoc is the part of the document the tests read.
type openAPIDoc struct {
	OpenAPI string                    `yaml:"openapi"`
	Paths   map[string]map[string]any `yaml:"paths"`
}

func loadOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	raw, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", openAPIFile, err)
	}
	if len(doc.Paths) == 0 {
		t.Fatalf("%s has no paths", openAPIFile)
	}
	return doc
}

// pattern is one ServeMux registration found in a source file.
type pattern struct {
	pattern string
	pos     string
}

// parsePatterns returns the string-literal patterns of every Handle and
// HandleFunc call in file. When strict, a registration whose pattern is
// not a literal fails the test (the comparison would silently miss it);
// otherwise such calls are skipped, for files where Handle also names
// other things (backend.Service.Handle registers an uplink handler).
func parsePatterns(t *testing.T, file string, strict bool) []pattern {
	t.Helper()
	fset := gotoken.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var out []pattern
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) != 2 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
			return true
		}
		pos := fset.Position(call.Pos()).String()
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != gotoken.STRING {
			if !strict {
				return true
			}
			t.Errorf("%s: route pattern is not a string literal; write it as one so the OpenAPI test sees it", pos)
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Errorf("%s: %v", pos, err)
			return true
		}
		out = append(out, pattern{pattern: s, pos: pos})
		return true
	})
	return out
}

// registeredRoutes returns normalised "METHOD /path" -> the pattern as
// registered, for every registration except the undocumented ones.
func registeredRoutes(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, src := range routeSources {
		for _, p := range parsePatterns(t, src, true) {
			if _, skip := undocumented[p.pattern]; skip {
				continue
			}
			method, path, ok := strings.Cut(p.pattern, " ")
			if !ok || !strings.HasPrefix(path, "/") {
				t.Errorf("%s: pattern %q has no method; give it one, or list it in undocumented with a reason", p.pos, p.pattern)
				continue
			}
			k := normaliseRoute(method + " " + path)
			if prev, dup := out[k]; dup {
				t.Errorf("%s: %q registered twice (also as %q)", p.pos, p.pattern, prev)
			}
			out[k] = p.pattern
		}
	}
	return out
}

var wildcard = regexp.MustCompile(`\{[^}]*\}`)

// normaliseRoute makes "GET /a/{id}" and "get /a/{device}" equal: the
// method upper case, every wildcard {}.
func normaliseRoute(r string) string {
	method, path, _ := strings.Cut(r, " ")
	return strings.ToUpper(method) + " " + wildcard.ReplaceAllString(path, "{}")
}

// pathParams returns the wildcard names of an OpenAPI path.
func pathParams(path string) []string {
	var out []string
	for _, m := range wildcard.FindAllString(path, -1) {
		out = append(out, strings.Trim(m, "{}"))
	}
	return out
}

// walkRefs calls fn with every $ref value in a decoded YAML tree.
func walkRefs(n any, fn func(string)) {
	switch v := n.(type) {
	case map[string]any:
		for k, c := range v {
			if s, ok := c.(string); ok && k == "$ref" {
				fn(s)
				continue
			}
			walkRefs(c, fn)
		}
	case []any:
		for _, c := range v {
			walkRefs(c, fn)
		}
	}
}

// resolveRef follows a local "#/a/b" reference.
func resolveRef(tree any, ref string) (any, bool) {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, false
	}
	cur := tree
	for _, part := range strings.Split(p, "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
