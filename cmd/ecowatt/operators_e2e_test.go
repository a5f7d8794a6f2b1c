package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOperatorCLI: an admin makes operators, each signs in with
// `ecowatt login` (token stored 0600 in its config dir and used with no
// --admin-token), their roles hold (exit 4 beyond them), the timeline
// names who changed a config, and revoking a token locks it out.
func TestOperatorCLI(t *testing.T) {
	s := startServer(t)
	s.provision(t, "op", 1)
	admin := func(args ...string) string {
		t.Helper()
		out, err := s.cli(t, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return out
	}
	admin("operator", "add", "alice", "--role", "operator", "--password", "alice-pw")
	admin("operator", "add", "vic", "--role", "viewer", "--password", "vic-pw")
	if out := admin("operator", "list"); !strings.Contains(out, "alice") || !strings.Contains(out, "operator") || !strings.Contains(out, "vic") {
		t.Fatalf("operator list:\n%s", out)
	}

	// as runs the CLI as a signed-in user: no ECOWATT_ADMIN_TOKEN.
	as := func(home string, args ...string) (string, int) {
		out, errOut, code, err := cliRun(map[string]string{"ECOWATT_SERVER": s.HTTP, "XDG_CONFIG_HOME": home}, args...)
		if err != nil {
			errOut += err.Error()
		}
		return out + errOut, code
	}
	homes := map[string]string{}
	for _, who := range []string{"alice", "vic"} {
		homes[who] = t.TempDir()
		if out, code := as(homes[who], "login", "--name", who, "--password", who+"-pw"); code != exitOK || !strings.Contains(out, "signed in as "+who) {
			t.Fatalf("login %s: exit %d\n%s", who, code, out)
		}
		path := filepath.Join(homes[who], "ecowatt", "token")
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("token file %s: %v %v", path, fi.Mode(), err)
		}
		if b, _ := os.ReadFile(path); !strings.HasPrefix(string(b), "ewt_") {
			t.Fatalf("token file holds %q", b)
		}
	}
	if out, code := as(t.TempDir(), "login", "--name", "alice", "--password", "wrong"); code != exitDenied {
		t.Fatalf("wrong password: exit %d\n%s", code, out)
	}
	if out, code := as(homes["alice"], "whoami"); code != exitOK || !strings.Contains(out, "alice (operator)") {
		t.Fatalf("whoami: exit %d %s", code, out)
	}

	// Roles: alice changes a config, vic cannot; neither provisions.
	if out, code := as(homes["alice"], "config", "set", "op-0001", "--sampling-interval", "3"); code != exitOK {
		t.Fatalf("alice config set: exit %d\n%s", code, out)
	}
	if out, code := as(homes["vic"], "config", "set", "op-0001", "--sampling-interval", "5"); code != exitDenied || !strings.Contains(out, "operator") {
		t.Fatalf("vic config set: exit %d\n%s", code, out)
	}
	for _, who := range []string{"alice", "vic"} {
		if out, code := as(homes[who], "device", "add", "op-new"); code != exitDenied {
			t.Fatalf("%s device add: exit %d\n%s", who, code, out)
		}
	}
	if out, code := as(homes["vic"], "device", "events", "op-0001", "--kind", "config"); code != exitOK || !strings.Contains(out, "by alice") {
		t.Fatalf("timeline does not name alice: exit %d\n%s", code, out)
	}

	// Revoking alice's token locks that token out.
	out := admin("operator", "token", "list", "alice")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("token list:\n%s", out)
	}
	tid := strings.Fields(lines[1])[0]
	admin("operator", "token", "revoke", "alice", tid)
	if out, code := as(homes["alice"], "whoami"); code != exitDenied {
		t.Fatalf("revoked token: exit %d %s", code, out)
	}

	// The last admin stays.
	admin("operator", "add", "root", "--role", "admin", "--password", "root-pw")
	if out, err := s.cli(t, "operator", "remove", "root"); err == nil || !strings.Contains(err.Error(), "last admin") || exitCode(err) != exitFailed {
		t.Fatalf("removing the last admin: %v\n%s", err, out)
	}
	admin("operator", "remove", "vic")
	if out, code := as(homes["vic"], "whoami"); code != exitDenied {
		t.Fatalf("removed operator's token: exit %d %s", code, out)
	}
}
