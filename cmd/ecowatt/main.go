// Command ecowatt runs the EcoWatt fleet backend (embedded MQTT broker,
// Redis-backed services, HTTP API and dashboard) and is the operator CLI that
// talks to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ecowatt:", err)
		}
		os.Exit(exitCode(err))
	}
}

// env is the process environment, injected so tests can run commands side by side.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run broker, backend and HTTP API in one process", runServe},
		{"device", "provision and inspect devices (add, list, show, events)", runDevice},
		{"telemetry", "show a device's telemetry as a table", runTelemetry},
		{"events", "follow the live event stream (config, commands, FOTA, security, presence)", runEvents},
		{"config", "change and inspect device configuration (set, show)", runConfig},
		{"command", "queue and inspect device commands (send, list, show, cancel)", runCommand},
		{"fota", "firmware updates: upload, rollout, status, rollback, sign, build-image, pubkey", runFOTA},
		{"certs", "generate development TLS material (gen)", runCerts},
		{"keys", "generate a firmware-signing key pair (gen)", runKeys},
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return fmt.Errorf("missing command")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprint(w, `ecowatt — fleet backend for solar-inverter gateways

Usage: ecowatt COMMAND [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Every flag has an environment equivalent: --http-addr is ECOWATT_HTTP_ADDR.
Client commands reach the server at --server (ECOWATT_SERVER, default
http://127.0.0.1:8080) with the admin token ECOWATT_ADMIN_TOKEN.
Run "ecowatt COMMAND --help" for a command's flags.
`)
}

// exitCode maps an error to a process exit status: 2 for usage errors.
func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }
