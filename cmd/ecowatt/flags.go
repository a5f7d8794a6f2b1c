package main

import (
	"flag"
	"fmt"
	"strings"
)

// newFlags makes a FlagSet whose errors go to stderr and whose usage names
// the environment equivalents.
func newFlags(e env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: ecowatt %s\n\nFlags (environment equivalent in brackets):\n", synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			fmt.Fprintf(e.stderr, "  --%s [%s]\n      %s%s\n", f.Name, envName(f.Name), f.Usage, def)
		})
	}
	return fs
}

// envName is the ECOWATT_* variable for a flag: --http-addr -> ECOWATT_HTTP_ADDR.
func envName(flagName string) string {
	return "ECOWATT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, allowing flags after positional arguments
// ("device show ID -o json"), then fills every flag not given on the command
// line from its ECOWATT_* variable. The command line wins over the
// environment, which wins over the default. It returns the positional
// arguments.
func parseFlags(fs *flag.FlagSet, e env, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v := e.getenv(envName(f.Name)); v != "" {
			if e2 := f.Value.Set(v); e2 != nil {
				err = usageError{fmt.Sprintf("%s=%q: %v", envName(f.Name), v, e2)}
			}
		}
	})
	return pos, err
}
