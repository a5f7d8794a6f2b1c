package main

import (
	"flag"
	"fmt"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

// usageError is a mistake in the command line: exit status 2, like the
// flagenv.UsageError of a bad flag.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

// newFlags makes the flag set of "ecowatt " + synopsis.
func newFlags(_ env, name, synopsis string) *flag.FlagSet {
	return flagenv.New(name, "ecowatt "+synopsis)
}

// parseFlags parses args (flags may follow positional arguments), fills
// the flags not given from their ECOWATT_* variables and returns the
// positional arguments; see flagenv.Parse.
func parseFlags(fs *flag.FlagSet, e env, args []string) ([]string, error) {
	return flagenv.Parse(fs, args, e.getenv, e.stdout, e.stderr)
}

// output is the -o flag: how a client command prints what the server sent.
type output string

const (
	outputTable output = "table"
	outputJSON  output = "json"
)

func (o *output) String() string { return string(*o) }

func (o *output) Set(s string) error {
	switch output(s) {
	case outputTable, outputJSON:
		*o = output(s)
		return nil
	}
	return fmt.Errorf("want %s or %s", outputTable, outputJSON)
}

// listFlag is a comma-separated list flag that may also be repeated:
// "--operator a:x --operator b:y" is "--operator a:x,b:y". A plain string
// flag keeps only the last of repeated flags, silently dropping the others.
type listFlag string

func (l *listFlag) String() string { return string(*l) }

func (l *listFlag) Set(s string) error {
	if *l != "" {
		s = string(*l) + "," + s
	}
	*l = listFlag(s)
	return nil
}
