package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

// TestFlagsHelp: --help prints every flag with its ECOWATT_* variable to
// stdout and is not an error.
func TestFlagsHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Usage: devicesim [flags]", "--broker [ECOWATT_BROKER]", "--state-dir [ECOWATT_STATE_DIR]", "--fota-power-cut [ECOWATT_FOTA_POWER_CUT]"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("help lacks %q:\n%s", w, out.String())
		}
	}
}

// TestFlagsEnvironment: a variable fills a flag not on the command line;
// the command line wins; a bad variable or a stray argument is a usage
// error.
func TestFlagsEnvironment(t *testing.T) {
	env := map[string]string{"ECOWATT_STATE_DIR": "/env/state", "ECOWATT_BROKER": "tcp://env:1883"}
	getenv := func(k string) string { return env[k] }
	o, err := parseArgs([]string{"--broker", "tcp://cli:1883"}, getenv, io.Discard, io.Discard)
	if err != nil || o.stateDir != "/env/state" || o.broker != "tcp://cli:1883" {
		t.Fatalf("%+v %v", o, err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"stray"}, nil},
		{nil, map[string]string{"ECOWATT_MAX_CONNECTING": "many"}},
		{[]string{"--nope"}, nil},
	} {
		_, err := parseArgs(tc.args, func(k string) string { return tc.env[k] }, io.Discard, io.Discard)
		if _, ok := errors.AsType[flagenv.UsageError](err); !ok {
			t.Errorf("%v %v: %v, want a usage error", tc.args, tc.env, err)
		}
	}
}
