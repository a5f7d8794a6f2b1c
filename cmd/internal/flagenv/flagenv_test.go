package flagenv

import (
	"bytes"
	"errors"
	"flag"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{"http-addr": "ECOWATT_HTTP_ADDR", "o": "ECOWATT_O", "redis": "ECOWATT_REDIS"} {
		if got := EnvName(in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

// testSet has a flag read from the environment (server), local ones (o,
// wait) and a duration.
func testSet() (*flag.FlagSet, *string, *string, *bool, *time.Duration) {
	fs := New("t", "t ID [flags]")
	server := fs.String("server", "http://a", "where")
	out := fs.String("o", "table", "format")
	wait := fs.Bool("wait", false, "wait")
	every := fs.Duration("every", time.Second, "how often")
	Local(fs, "o", "wait")
	return fs, server, out, wait, every
}

func TestParse(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		env    map[string]string
		pos    []string
		server string
		out    string
		wait   bool
		every  time.Duration
	}{
		{"defaults", nil, nil, nil, "http://a", "table", false, time.Second},
		{"flags after positionals", []string{"x", "-o", "json", "y", "--wait"}, nil, []string{"x", "y"}, "http://a", "json", true, time.Second},
		{"after -- all positional", []string{"x", "--", "-o", "--wait"}, nil, []string{"x", "-o", "--wait"}, "http://a", "table", false, time.Second},
		{"environment fills", nil, map[string]string{"ECOWATT_SERVER": "http://env", "ECOWATT_EVERY": "5s"}, nil, "http://env", "table", false, 5 * time.Second},
		{"command line wins", []string{"--server", "http://cli"}, map[string]string{"ECOWATT_SERVER": "http://env"}, nil, "http://cli", "table", false, time.Second},
		{"local flags ignore the environment", nil, map[string]string{"ECOWATT_O": "json", "ECOWATT_WAIT": "true"}, nil, "http://a", "table", false, time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs, server, out, wait, every := testSet()
			var stdout, stderr bytes.Buffer
			pos, err := Parse(fs, tc.args, func(k string) string { return tc.env[k] }, &stdout, &stderr)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pos, tc.pos) || *server != tc.server || *out != tc.out || *wait != tc.wait || *every != tc.every {
				t.Fatalf("got %q server %q o %q wait %v every %v", pos, *server, *out, *wait, *every)
			}
			if stdout.Len()+stderr.Len() != 0 {
				t.Fatalf("printed %q %q", stdout.String(), stderr.String())
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"--nope"}, nil, "flag provided but not defined"},
		{"bad value", []string{"--every", "soon"}, nil, "invalid value"},
		{"bad variable", nil, map[string]string{"ECOWATT_EVERY": "soon"}, "ECOWATT_EVERY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs, server, _, _, _ := testSet()
			var stdout, stderr bytes.Buffer
			_, err := Parse(fs, tc.args, func(k string) string { return tc.env[k] }, &stdout, &stderr)
			var u UsageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want a UsageError with %q", err, tc.want)
			}
			if stdout.Len() != 0 || *server != "http://a" {
				t.Fatalf("stdout %q, server %q", stdout.String(), *server)
			}
			// The usage goes to stderr once; the error is the caller's to print.
			if len(tc.args) > 0 && (!strings.HasPrefix(stderr.String(), "Usage: t ID") || strings.Contains(stderr.String(), tc.want)) {
				t.Fatalf("stderr %q, want the usage alone", stderr.String())
			}
		})
	}
}

// TestUsage: -h prints to stdout how each flag is typed, with its variable
// only where it has one.
func TestUsage(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		fs, _, _, _, _ := testSet()
		var stdout, stderr bytes.Buffer
		if _, err := Parse(fs, []string{"x", arg}, func(string) string { return "" }, &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s: %v, want flag.ErrHelp", arg, err)
		}
		got := stdout.String()
		for _, want := range []string{"Usage: t ID [flags]\n", "  --server [ECOWATT_SERVER]\n", "  -o\n      format (default \"table\")", "  --wait\n      wait\n", "--every [ECOWATT_EVERY]"} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: usage lacks %q:\n%s", arg, want, got)
			}
		}
		for _, bad := range []string{"--o", "ECOWATT_O", "ECOWATT_WAIT"} {
			if strings.Contains(got, bad) {
				t.Errorf("%s: usage has %q:\n%s", arg, bad, got)
			}
		}
		if stderr.Len() != 0 {
			t.Errorf("%s: stderr %q", arg, stderr.String())
		}
	}
}
