package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// logComponents parses every line of a --log-format json log as exactly one
// JSON object with unique member names (RFC 7493: jsontext refuses a repeated
// name, where encoding/json would silently keep the last "component") and
// counts the lines per component ("" for lines without one).
func logComponents(logs string) (map[string]int, error) {
	seen := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		fail := func(err error) error { return fmt.Errorf("log line %d: %v\n%s", n, err, line) }
		dec := jsontext.NewDecoder(bytes.NewReader(line))
		if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
			return nil, fail(fmt.Errorf("not a JSON object (%v)", err))
		}
		component := ""
		for dec.PeekKind() != '}' {
			tok, err := dec.ReadToken()
			if err != nil {
				return nil, fail(err)
			}
			name := tok.String() // tok is only valid until the next read
			val, err := dec.ReadValue()
			if err != nil {
				return nil, fail(err)
			}
			if name == "component" {
				if val.Kind() != '"' {
					return nil, fail(errors.New("component is not a string"))
				}
				s, _ := jsontext.AppendUnquote(nil, val)
				component = string(s)
			}
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, fail(err)
		}
		if _, err := dec.ReadToken(); !errors.Is(err, io.EOF) {
			return nil, fail(errors.New("more than one JSON value"))
		}
		seen[component]++
	}
	return seen, sc.Err()
}

// TestLogComponentsRefusesDuplicates: the checker below can fail.
func TestLogComponentsRefusesDuplicates(t *testing.T) {
	for _, bad := range []string{
		`{"level":"info","component":"http","component":"httpapi","message":"x"}`,
		`{"level":"info"} {"level":"info"}`,
		`not json`,
		`["component"]`,
	} {
		if _, err := logComponents(bad + "\n"); err == nil {
			t.Errorf("logComponents(%s) accepted it", bad)
		}
	}
	got, err := logComponents(`{"component":"broker","a":{"component":"x"}}` + "\n" + `{"message":"m"}` + "\n")
	if err != nil || got["broker"] != 1 || got[""] != 1 || len(got) != 2 {
		t.Fatalf("logComponents = %v, %v; want broker:1 and one line without", got, err)
	}
}

// TestJSONLogsHaveUniqueKeys: the real server with --log-format json writes
// only JSON objects with each key once, and every component of the embedded
// mode logs under its own name. The traffic makes each of them log: two demo
// devices (broker, mochi, backend, demo), a command (commands), a config
// change (config) that makes them upload every 2 s into a 1 ms retention
// (telemetry warns that it drops the batches), a request without a token
// (httpapi) and the FOTA sweep lease (fota).
func TestJSONLogsHaveUniqueKeys(t *testing.T) {
	args := append([]string{"--log-level", "debug", "--log-format", "json", "--demo", "2",
		"--config-sweep", "1s", "--telemetry-retention", "1ms"}, commandArgs...)
	s := startServer(t, args...)
	cmdWaitOnline(t, s, 2)
	const dev = "demo-0001"
	c := s.submitCommand(t, dev, map[string]any{"action": "ping", "ttl": "1m"})
	s.waitCommand(t, c.ID, "succeeded", 30*time.Second)
	var cfg json.RawMessage
	if code := s.api(t, "PUT", "/api/v1/devices/"+dev+"/config", map[string]any{"sampling_interval": 1, "upload_interval": 2}, &cfg); code != 200 {
		t.Fatalf("PUT config: %d %s", code, cfg)
	}
	waitInSync(t, s, dev, 1)
	resp, err := http.Get(s.HTTP + "/api/v1/devices")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET without a token: %d, want 401", resp.StatusCode)
	}

	want := []string{"backend", "broker", "commands", "config", "demo", "fota", "httpapi", "jobs", "mochi", "telemetry"}
	missing := func() []string {
		seen, err := logComponents(s.logs.String())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range want {
			if seen[c] == 0 {
				out = append(out, c)
			}
		}
		return out
	}
	eventually(t, 30*time.Second, "a log line from every component", func() (bool, string) {
		m := missing()
		return len(m) == 0, fmt.Sprintf("no line from %v yet", m)
	})
	// Shutdown logs too; those lines must be as valid.
	s.stop(t)
	seen, err := logComponents(s.logs.String())
	if err != nil {
		t.Fatal(err)
	}
	var unknown []string
	for c := range seen {
		if c != "" && !slices.Contains(want, c) {
			unknown = append(unknown, c)
		}
	}
	if len(unknown) > 0 {
		t.Errorf("components %v logged but not expected: add them to want (%v)", unknown, seen)
	}
}
