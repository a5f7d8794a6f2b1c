package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
)

// passwordFlags are --password and --password-stdin, for the commands
// that send one.
type passwordFlags struct {
	password *string
	stdin    *bool
}

func addPasswordFlags(k *call) passwordFlags {
	return passwordFlags{
		password: k.fs.String("password", "", "the password (visible in the process list; prefer --password-stdin)"),
		stdin:    k.fs.Bool("password-stdin", false, "read the password from the first line of standard input"),
	}
}

func (p passwordFlags) get(k *call) (string, error) {
	switch {
	case *p.password != "" && *p.stdin:
		return "", k.usage("--password and --password-stdin exclude each other")
	case *p.stdin:
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s: read password: %w", k.name, err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	case *p.password != "":
		return *p.password, nil
	}
	return "", k.usage("give --password or --password-stdin")
}

func operatorAdd(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator add", "operator add NAME --role viewer|operator|admin (--password P | --password-stdin)", true)
	role := k.fs.String("role", "", "viewer, operator or admin")
	pw := addPasswordFlags(k)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if *role == "" {
		return k.usage("give --role")
	}
	password, err := pw.get(k)
	if err != nil {
		return err
	}
	in := map[string]string{"name": pos[0], "password": password, "role": *role}
	return show(ctx, k, "POST", apiPath("operators"), in, func(w io.Writer, op backend.Operator) error {
		fmt.Fprintf(w, "operator %s created with role %s; it signs in with `ecowatt login --name %s`\n", op.Name, op.Role, op.Name)
		return nil
	})
}

func operatorList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator list", "operator list [-o table|json]", true)
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	type doc struct {
		Operators []backend.Operator `json:"operators"`
	}
	return show(ctx, k, "GET", apiPath("operators"), nil, func(w io.Writer, d doc) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
		for _, op := range d.Operators {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", op.Name, op.Role, op.CreatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

func operatorRemove(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator remove", "operator remove NAME", false)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if _, err := k.send(ctx, "DELETE", apiPath("operators", pos[0]), nil); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "operator %s removed; its API tokens are revoked\n", pos[0])
	return nil
}

// newToken is the API's answer to a token creation or a login.
type newToken struct {
	backend.Token
	Secret string      `json:"token"`
	Role   topics.Role `json:"role"`
}

func tokenCreate(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator token create", "operator token create NAME [--label L] [-o table|json]", true)
	label := k.fs.String("label", "", "what the token is for (shown in lists)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return show(ctx, k, "POST", apiPath("operators", pos[0], "tokens"), map[string]string{"label": *label}, func(w io.Writer, t newToken) error {
		fmt.Fprintln(w, t.Secret)
		fmt.Fprintf(e.stderr, "token %s for %s; shown only now: store it (ecowatt login --with-token reads it)\n", t.ID, t.Operator)
		return nil
	})
}

func tokenList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator token list", "operator token list NAME [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	type doc struct {
		Tokens []backend.Token `json:"tokens"`
	}
	return show(ctx, k, "GET", apiPath("operators", pos[0], "tokens"), nil, func(w io.Writer, d doc) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tLABEL\tCREATED\tLAST USED")
		for _, t := range d.Tokens {
			used := "never"
			if t.LastUsed != nil {
				used = t.LastUsed.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Label, t.CreatedAt.Format(time.RFC3339), used)
		}
		return tw.Flush()
	})
}

func tokenRevoke(ctx context.Context, e env, args []string) error {
	k := newCall(e, "operator token revoke", "operator token revoke NAME TOKEN-ID", false)
	pos, err := k.parse(args, 2, 2)
	if err != nil {
		return err
	}
	if _, err := k.send(ctx, "DELETE", apiPath("operators", pos[0], "tokens", pos[1]), nil); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "token %s of %s revoked\n", pos[1], pos[0])
	return nil
}

// runLogin signs in with a name and password (or takes a token) and stores
// the token for the client commands that get no --admin-token.
func runLogin(ctx context.Context, e env, args []string) error {
	k := newCall(e, "login", "login (--name NAME (--password P | --password-stdin) | --with-token)", false)
	name := k.fs.String("name", "", "operator name")
	label := k.fs.String("label", "", "what the token is for (default: login from HOST)")
	withToken := k.fs.Bool("with-token", false, "read an API token from standard input instead of signing in")
	pw := addPasswordFlags(k)
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	var secret string
	switch {
	case *withToken:
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("login: read token: %w", err)
		}
		secret = strings.TrimSpace(line)
	case *name != "":
		password, err := pw.get(k)
		if err != nil {
			return err
		}
		if *label == "" {
			host, _ := os.Hostname()
			*label = "login from " + host
		}
		k.c.token = "" // signing in needs none
		var t newToken
		if err := k.c.do(ctx, "POST", apiPath("login"), map[string]string{"name": *name, "password": password, "label": *label}, &t); err != nil {
			return fmt.Errorf("login: %w", err)
		}
		secret = t.Secret
	default:
		return k.usage("give --name, or --with-token")
	}
	k.c.token = secret
	var who struct{ Operator, Role string }
	if err := k.c.do(ctx, "GET", apiPath("whoami"), nil, &who); err != nil {
		return fmt.Errorf("login: check the token: %w", err)
	}
	path, err := tokenFile(e)
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	if err := writeSecret(path, secret); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	fmt.Fprintf(e.stdout, "signed in as %s (%s); token stored in %s\n", who.Operator, who.Role, path)
	return nil
}

func runWhoami(ctx context.Context, e env, args []string) error {
	k := newCall(e, "whoami", "whoami [-o table|json]", true)
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	type doc struct {
		Operator  string `json:"operator"`
		Role      string `json:"role"`
		Bootstrap bool   `json:"bootstrap"`
	}
	return show(ctx, k, "GET", apiPath("whoami"), nil, func(w io.Writer, d doc) error {
		how := ""
		if d.Bootstrap {
			how = " with the bootstrap admin token"
		}
		fmt.Fprintf(w, "%s (%s)%s\n", d.Operator, d.Role, how)
		return nil
	})
}

// tokenFile is where login keeps the token: the user's config dir (as
// os.UserConfigDir, but from the injected environment so tests and
// side-by-side runs stay apart), ecowatt/token.
func tokenFile(e env) (string, error) {
	dir := e.getenv("XDG_CONFIG_HOME")
	if dir == "" && runtime.GOOS != "windows" && runtime.GOOS != "darwin" && runtime.GOOS != "ios" && runtime.GOOS != "plan9" {
		if h := e.getenv("HOME"); h != "" {
			dir = filepath.Join(h, ".config")
		}
	}
	if dir == "" && (runtime.GOOS == "windows" || runtime.GOOS == "darwin" || runtime.GOOS == "ios" || runtime.GOOS == "plan9") {
		d, err := os.UserConfigDir()
		if err != nil {
			return "", err
		}
		dir = d
	}
	if dir == "" {
		return "", errors.New("no config dir: neither $XDG_CONFIG_HOME nor $HOME is set")
	}
	return filepath.Join(dir, "ecowatt", "token"), nil
}

// storedToken returns the token login stored, or "" when there is none.
func storedToken(e env) string {
	path, err := tokenFile(e)
	if err != nil {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// writeSecret writes s to path, readable by the user only, atomically.
func writeSecret(path, s string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".token-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
