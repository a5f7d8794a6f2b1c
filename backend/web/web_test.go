package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Result()
}

func TestHandler(t *testing.T) {
	h := Handler()
	cases := []struct {
		path, status, ctype string
	}{
		{"/", "200", "text/html"},
		{"/static/app.css", "200", "text/css"},
		{"/static/js/app.js", "200", "text/javascript"},
		{"/static/favicon.svg", "200", "image/svg+xml"},
		{"/static/", "404", ""},
		{"/static/js/", "404", ""},
		{"/static/nope.js", "404", ""},
		{"/static/../web.go", "404", ""},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			resp := get(t, h, tc.path)
			if got := resp.Status[:3]; got != tc.status {
				t.Fatalf("GET %s = %s, want %s", tc.path, resp.Status, tc.status)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) {
				t.Errorf("Content-Type %q, want %s", resp.Header.Get("Content-Type"), tc.ctype)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
			if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no nosniff")
			}
		})
	}
}

// TestAssetsResolve: every asset the page and the modules name is
// embedded, and nothing is loaded from another origin.
func TestAssetsResolve(t *testing.T) {
	ref := regexp.MustCompile(`(?:src|href)="(/static/[^"]+)"|from "\./([^"]+)"`)
	err := fs.WalkDir(static, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".html") || strings.HasSuffix(path, ".js")) {
			return err
		}
		b, err := fs.ReadFile(static, path)
		if err != nil {
			return err
		}
		// The SVG namespace is a name, not a fetch.
		if strings.Contains(strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", ""), "://") {
			t.Errorf("%s names another origin", path)
		}
		for _, m := range ref.FindAllStringSubmatch(string(b), -1) {
			url := m[1]
			if url == "" {
				url = "/static/js/" + m[2]
			}
			resp := get(t, Handler(), url)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || len(body) == 0 {
				t.Errorf("%s names %s: %s", path, url, resp.Status)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
