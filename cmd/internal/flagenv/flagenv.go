// Package flagenv is the command-line parsing of the ecowatt binaries: a
// flag may follow positional arguments, a flag not on the command line is
// read from its ECOWATT_* environment variable (unless it is local to one
// invocation), and the usage names each flag as it is typed (-o, --server)
// with its variable.
package flagenv

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// UsageError is a mistake in the command line (exit status 2).
type UsageError struct{ Msg string }

func (u UsageError) Error() string { return u.Msg }

// EnvName is the variable of a flag: --http-addr is ECOWATT_HTTP_ADDR.
func EnvName(flagName string) string {
	return "ECOWATT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// New returns a flag set whose usage starts with "Usage: " + synopsis and
// lists every flag.
func New(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() { usage(fs.Output(), fs, synopsis) }
	return fs
}

// local wraps the value of a flag that is given on the command line only.
type local struct{ flag.Value }

// IsBoolFlag keeps "--wait" (without a value) working for a local bool.
func (l local) IsBoolFlag() bool {
	b, ok := l.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// Local marks the named flags of fs as local to one invocation (an output
// format, a version to upload): they have no environment variable, so a
// stray ECOWATT_VERSION cannot change what a command does.
func Local(fs *flag.FlagSet, names ...string) {
	for _, n := range names {
		if f := fs.Lookup(n); f != nil {
			if _, ok := f.Value.(local); !ok {
				f.Value = local{f.Value}
			}
		}
	}
}

// HasEnv reports whether f is read from the environment.
func HasEnv(f *flag.Flag) bool {
	_, ok := f.Value.(local)
	return !ok
}

func usage(w io.Writer, fs *flag.FlagSet, synopsis string) {
	fmt.Fprintf(w, "Usage: %s\n", synopsis)
	n, env := 0, false
	fs.VisitAll(func(f *flag.Flag) {
		n++
		env = env || HasEnv(f)
	})
	if n == 0 {
		return
	}
	if env {
		fmt.Fprint(w, "\nFlags (environment variable in brackets; the command line wins):\n")
	} else {
		fmt.Fprint(w, "\nFlags:\n")
	}
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  %s", Spelling(f.Name))
		if HasEnv(f) {
			fmt.Fprintf(w, " [%s]", EnvName(f.Name))
		}
		fmt.Fprintf(w, "\n      %s", f.Usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// Spelling is how a flag is typed: -o for one letter, --server otherwise.
func Spelling(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// Parse parses args, letting flags follow positional arguments ("device
// show ID -o json"), then fills every flag that is neither on the command
// line nor local from its variable: the command line wins over the
// environment, which wins over the default. It returns the positional
// arguments; after "--" every argument is positional. -h or --help prints the usage to stdout and returns
// flag.ErrHelp; a bad flag or variable prints the error and the usage to
// stderr and returns a UsageError.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string, stdout, stderr io.Writer) ([]string, error) {
	var out bytes.Buffer
	fs.SetOutput(&out)
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			_, _ = out.WriteTo(stdout)
			return nil, err
		}
		if err != nil {
			// The flag package wrote the error, then the usage: the
			// caller prints the error, so only the usage goes out here.
			_, usage, _ := bytes.Cut(out.Bytes(), []byte("\n"))
			_, _ = stderr.Write(usage)
			return nil, UsageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...) // after "--" nothing is a flag
			break
		}
		if args = rest; len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || !HasEnv(f) || err != nil {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = UsageError{fmt.Sprintf("%s=%q: %v", EnvName(f.Name), v, e)}
			}
		}
	})
	return pos, err
}
