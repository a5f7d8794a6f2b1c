package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

// cliRun runs the CLI as main does and returns what it printed and its
// exit status.
func cliRun(env map[string]string, args ...string) (stdout, stderr string, code int, err error) {
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
	return out.String(), errOut.String(), exitCode(err), err
}

// nowhere is a server address nothing listens on: a command that should
// fail before it sends anything exits 1 there, not 2.
var nowhere = map[string]string{"ECOWATT_SERVER": "http://127.0.0.1:1", "ECOWATT_ADMIN_TOKEN": "t"}

// walk calls fn for every node of the command tree, with its path.
func walk(path []string, cs []command, fn func(path []string, c command)) {
	for _, c := range cs {
		p := append(append([]string{}, path...), c.name)
		fn(p, c)
		walk(p, c.sub, fn)
	}
}

// TestHelpCommandTree fails when a command is added without what its help
// needs: a summary, and exactly one of run and sub.
func TestHelpCommandTree(t *testing.T) {
	seen := map[string]bool{}
	walk(nil, commandTree(), func(path []string, c command) {
		name := strings.Join(path, " ")
		if c.summary == "" {
			t.Errorf("%s: no summary for its group's help", name)
		}
		if (c.run == nil) == (c.sub == nil) {
			t.Errorf("%s: want exactly one of run and sub", name)
		}
		if seen[name] {
			t.Errorf("%s: listed twice", name)
		}
		seen[name] = true
	})
}

// TestHelpEveryLevel: --help, -h and help at the top and on every group,
// and --help on every leaf, print the usage to stdout and exit 0; a leaf's
// usage names it, and every flag as it is typed, with a description.
func TestHelpEveryLevel(t *testing.T) {
	type level struct {
		path  []string
		names []string // what the usage must list
	}
	var groups []level
	top := level{}
	for _, c := range commandTree() {
		top.names = append(top.names, c.name)
	}
	groups = append(groups, top)
	var leaves [][]string
	walk(nil, commandTree(), func(path []string, c command) {
		if c.sub == nil {
			leaves = append(leaves, path)
			return
		}
		g := level{path: path}
		for _, s := range c.sub {
			g.names = append(g.names, s.name+" ", s.summary)
		}
		groups = append(groups, g)
	})
	for _, g := range groups {
		for _, h := range []string{"--help", "-h", "help"} {
			args := append(append([]string{}, g.path...), h)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				out, errOut, code, err := cliRun(nowhere, args...)
				if code != exitOK || err != nil {
					t.Fatalf("exit %d (%v), want 0", code, err)
				}
				want := "Usage: " + strings.Join(append([]string{"ecowatt"}, g.path...), " ") + " COMMAND"
				if !strings.Contains(out, want) || errOut != "" {
					t.Fatalf("stdout lacks %q (stderr %q):\n%s", want, errOut, out)
				}
				for _, n := range g.names {
					if !strings.Contains(out, n) {
						t.Errorf("usage lacks %q:\n%s", n, out)
					}
				}
			})
		}
	}
	for _, path := range leaves {
		args := append(append([]string{}, path...), "--help")
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out, errOut, code, err := cliRun(nowhere, args...)
			if code != exitOK || err != nil {
				t.Fatalf("exit %d (%v), want 0\n%s", code, err, errOut)
			}
			if want := "Usage: ecowatt " + strings.Join(path, " "); !strings.HasPrefix(out, want) || errOut != "" {
				t.Fatalf("stdout does not start with %q (stderr %q):\n%s", want, errOut, out)
			}
			if strings.Contains(out, "\n      \n") || strings.Contains(out, "--o ") || strings.Contains(out, "--o\n") {
				t.Errorf("a flag without a description, or -o spelt --o:\n%s", out)
			}
		})
	}
}

// TestHelpEnvironmentNames: the usage gives a variable where the
// environment is read (serve's flags, --server, --admin-token) and none
// for a client command's per-invocation flags such as -o.
func TestHelpEnvironmentNames(t *testing.T) {
	cases := []struct {
		args     []string
		has, not []string
	}{
		{[]string{"serve", "--help"}, []string{"--http-addr [ECOWATT_HTTP_ADDR]", "--redis [ECOWATT_REDIS]"}, nil},
		{[]string{"device", "list", "--help"}, []string{"--server [ECOWATT_SERVER]", "--admin-token [ECOWATT_ADMIN_TOKEN]", "\n  -o\n      output format: table or json"}, []string{"ECOWATT_O"}},
		{[]string{"fota", "upload", "--help"}, []string{"--version\n"}, []string{"ECOWATT_VERSION", "ECOWATT_O"}},
		{[]string{"fota", "build-image", "--help"}, []string{"\n  -o\n      output file"}, []string{"ECOWATT_"}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, _, code, _ := cliRun(nowhere, tc.args...)
			if code != exitOK {
				t.Fatalf("exit %d", code)
			}
			for _, w := range tc.has {
				if !strings.Contains(out, w) {
					t.Errorf("lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(out, w) {
					t.Errorf("has %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestCLIUsageErrors: a mistake in the command line exits 2 with a clear
// message, before anything is sent (the server address is closed, so a
// request would exit 1).
func TestCLIUsageErrors(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fw.bin")
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no command", nil, nil, "missing command"},
		{"unknown command", nil, []string{"nope"}, `unknown command "nope"`},
		{"group without subcommand", nil, []string{"device"}, "missing command"},
		{"unknown subcommand", nil, []string{"device", "nope"}, `unknown command "device nope"`},
		{"missing ID", nil, []string{"device", "show"}, "usage: ecowatt device show ID"},
		{"extra argument", nil, []string{"device", "show", "a", "b"}, "usage: ecowatt device show ID"},
		{"-o yaml", nil, []string{"device", "list", "-o", "yaml"}, "want table or json"},
		{"-o yaml after the ID", nil, []string{"command", "show", "c1", "-o", "yaml"}, "want table or json"},
		{"unknown flag", nil, []string{"device", "list", "--bogus"}, "flag provided but not defined"},
		{"VALUE not an integer", nil, []string{"command", "send", "d", "write_register", "export_power", "x"}, "not an integer"},
		{"bad --ttl", nil, []string{"command", "send", "d", "ping", "--ttl", "soon"}, "invalid value"},
		{"rollout without devices", nil, []string{"fota", "rollout", "--version", "1.0.4"}, "exactly one of --devices and --all"},
		{"config set without a change", nil, []string{"config", "set", "d"}, "give at least one"},
		{"bad size", nil, []string{"fota", "build-image", "--version", "1", "--size", "big", "-o", img}, "positive number"},
		{"keys without gen", nil, []string{"keys"}, "missing command"},
		{"keys gen with an argument", nil, []string{"keys", "gen", "extra"}, "usage: ecowatt keys gen"},
		// A local flag is not read from the environment: ECOWATT_VERSION
		// does not stand in for --version.
		{"local flag from the environment", map[string]string{"ECOWATT_VERSION": "1.0.4"}, []string{"fota", "build-image", "-o", img}, "give --version"},
		{"serve: bad --log-level (the command line wins over ECOWATT_LOG_LEVEL)", map[string]string{"ECOWATT_LOG_LEVEL": "info"}, []string{"serve", "--http-addr", "127.0.0.1:0", "--log-level", "loud"}, "--log-level"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range nowhere {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			out, _, code, err := cliRun(env, tc.args...)
			if code != exitUsage || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("exit %d, err %v; want exit 2 with %q", code, err, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

// TestCLIExitCodeMap: the HTTP status of the server's error decides the
// exit status, wrapped or not.
func TestCLIExitCodeMap(t *testing.T) {
	api := func(status int) error { return fmt.Errorf("device show: %w", &apiError{Status: status}) }
	cases := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{usageError{"x"}, 2},
		{fmt.Errorf("wrapped: %w", flagenv.UsageError{Msg: "x"}), 2},
		{api(http.StatusNotFound), 3},
		{api(http.StatusUnauthorized), 4},
		{api(http.StatusForbidden), 4},
		{api(http.StatusBadRequest), 1},
		{api(http.StatusConflict), 1},
		{api(http.StatusServiceUnavailable), 1},
		{errors.New("connection refused"), 1},
	}
	for _, tc := range cases {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestCLIAPIPathEscapes(t *testing.T) {
	if got, want := apiPath("devices", "a/b c?", "config"), "/api/v1/devices/a%2Fb%20c%3F/config"; got != want {
		t.Fatalf("apiPath = %q, want %q", got, want)
	}
}

// TestCLIExitCodesAgainstServer: the real server's answers map to the
// documented exit statuses, -o json prints the server's document as it
// came, and an ID is one path segment however it is spelt.
func TestCLIExitCodesAgainstServer(t *testing.T) {
	s := startServer(t)
	s.provision(t, "pe", 1)
	env := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": s.Token}
	denied := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": "wrong"}
	down := map[string]string{"ECOWATT_SERVER": "http://127.0.0.1:1", "ECOWATT_ADMIN_TOKEN": s.Token}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want int
	}{
		{"ok", env, []string{"device", "show", "pe-0001"}, exitOK},
		{"unknown device", env, []string{"device", "show", "ghost"}, exitNotFound},
		// Unescaped, this would be GET /devices/pe-0001/telemetry: 200.
		{"ID with a slash", env, []string{"device", "show", "pe-0001/telemetry"}, exitNotFound},
		{"unknown command ID", env, []string{"command", "show", "nope"}, exitNotFound},
		{"unknown rollout", env, []string{"fota", "status", "ro-nope"}, exitNotFound},
		{"config of an unknown device", env, []string{"config", "set", "ghost", "--sampling-interval", "5"}, exitNotFound},
		{"wrong token", denied, []string{"device", "list"}, exitDenied},
		{"rejected value", env, []string{"config", "set", "pe-0001", "--sampling-interval", "999"}, exitFailed},
		{"duplicate device", env, []string{"device", "add", "pe-0001"}, exitFailed},
		{"server down", down, []string{"device", "list"}, exitFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code, err := cliRun(tc.env, tc.args...)
			if code != tc.want {
				t.Fatalf("exit %d (%v), want %d\n%s%s", code, err, tc.want, out, errOut)
			}
		})
	}
	out, _, code, err := cliRun(env, "device", "show", "pe-0001", "-o", "json")
	var got, want map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &got) != nil {
		t.Fatalf("device show -o json: exit %d %v\n%s", code, err, out)
	}
	s.api(t, "GET", "/api/v1/devices/pe-0001", nil, &want)
	delete(got, "uptime_s")
	delete(want, "uptime_s")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("-o json printed\n%v\nthe API sent\n%v", got, want)
	}
}
