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
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ecowatt:", err)
	}
	os.Exit(exitCode(err))
}

// env is the process environment, injected so tests can run commands side by side.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

// command is a node of the command tree: a group of subcommands (sub) or
// a leaf that parses its own flags (run).
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e env, args []string) error
	sub     []command
}

// commandTree is every command of the CLI; `ecowatt [GROUP] --help` lists
// them from here.
func commandTree() []command {
	return []command{
		{name: "serve", summary: "run broker, backend and HTTP API in one process", run: runServe},
		{name: "device", summary: "provision, inspect, label, disable and remove devices", sub: []command{
			{name: "add", summary: "provision one device, or --count N of them (with --label), and print their keys", run: deviceAdd},
			{name: "label", summary: "set (KEY=VALUE) or delete (KEY-) a device's labels", run: deviceLabel},
			{name: "list", summary: "the devices a --selector matches, page by page, with presence, firmware, config version and labels", run: deviceList},
			{name: "show", summary: "one device", run: deviceShow},
			{name: "rotate-key", summary: "replace a device's key over the air (PROTOCOL.md section 15)", run: deviceRotateKey},
			{name: "events", summary: "a device's audit timeline, oldest first", run: deviceEvents},
			{name: "disable", summary: "refuse a device's connections and close its session (--reason)", run: deviceDisable},
			{name: "enable", summary: "let a disabled device connect again", run: deviceEnable},
			{name: "remove", summary: "decommission a device: destroy its key, keep its history (--purge: delete everything)", run: deviceRemove},
		}},
		{name: "fleet", summary: "fleet-wide views", sub: []command{
			{name: "summary", summary: "device counts by online, firmware, config and FOTA state (of a --selector)", run: fleetSummary},
		}},
		{name: "telemetry", summary: "show a device's telemetry as a table", run: runTelemetry},
		{name: "events", summary: "follow the live event stream (config, commands, FOTA, security, presence)", run: runEvents},
		{name: "config", summary: "change and inspect device configuration", sub: []command{
			{name: "set", summary: "change some of a device's desired config", run: configSet},
			{name: "show", summary: "desired vs reported config, delivery, last ack and history", run: configShow},
		}},
		{name: "command", summary: "queue and inspect device commands", sub: []command{
			{name: "send", summary: "queue a command for a device (--wait for its result)", run: commandSend},
			{name: "list", summary: "a device's commands, newest first", run: commandList},
			{name: "show", summary: "one command", run: commandShow},
			{name: "cancel", summary: "cancel a command that is still queued", run: commandCancel},
		}},
		{name: "fota", summary: "firmware images, updates and rollouts", sub: []command{
			{name: "build-image", summary: "make a test image for devicesim", run: fotaBuildImage},
			{name: "sign", summary: "sign a manifest offline", run: fotaSign},
			{name: "pubkey", summary: "print the server's firmware public key (PEM)", run: fotaPubkey},
			{name: "upload", summary: "upload firmware", run: fotaUpload},
			{name: "list", summary: "uploaded firmware", run: fotaList},
			{name: "show", summary: "one uploaded firmware with its manifest", run: fotaShow},
			{name: "update", summary: "update one device", run: fotaUpdate},
			{name: "device", summary: "a device's update progress", run: fotaDevice},
			{name: "rollback", summary: "return a device to its previous firmware", run: fotaRollback},
			{name: "rollout", summary: "update many devices in batches, after a canary", run: fotaRollout},
			{name: "status", summary: "rollout progress (every rollout without RID)", run: fotaStatus},
			{name: "pause", summary: "pause a rollout", run: fotaAction("pause")},
			{name: "resume", summary: "resume a paused rollout", run: fotaAction("resume")},
			{name: "abort", summary: "abort a rollout", run: fotaAction("abort")},
		}},
		{name: "job", summary: "one config change, command or firmware update across many devices, paced", sub: []command{
			{name: "create", summary: "start a job over a selector or a device list", run: jobCreate},
			{name: "list", summary: "the newest jobs with their progress", run: jobList},
			{name: "status", summary: "one job's progress (--watch until it ends)", run: jobStatus},
			{name: "devices", summary: "a job's devices with their states and reasons (--state failed)", run: jobDevices},
			{name: "pause", summary: "stop issuing new parts", run: jobAction("pause")},
			{name: "resume", summary: "resume a paused job", run: jobAction("resume")},
			{name: "cancel", summary: "end a job; devices not reached get nothing", run: jobAction("cancel")},
		}},
		{name: "operator", summary: "operator accounts (HTTP and MQTT) and their API tokens", sub: []command{
			{name: "add", summary: "create an operator with a role: viewer, operator or admin", run: operatorAdd},
			{name: "list", summary: "every operator with its role", run: operatorList},
			{name: "remove", summary: "delete an operator and revoke its tokens (never the last admin)", run: operatorRemove},
			{name: "token", summary: "an operator's API tokens", sub: []command{
				{name: "create", summary: "create a token, shown once", run: tokenCreate},
				{name: "list", summary: "an operator's tokens (ids, created, last used)", run: tokenList},
				{name: "revoke", summary: "revoke a token", run: tokenRevoke},
			}},
		}},
		{name: "login", summary: "sign in as an operator and store its token for the other commands", run: runLogin},
		{name: "whoami", summary: "the operator and role the server sees", run: runWhoami},
		{name: "certs", summary: "development TLS material", sub: []command{
			{name: "gen", summary: "generate a dev CA and a server certificate", run: runCertsGen},
		}},
		{name: "keys", summary: "firmware-signing keys", sub: []command{
			{name: "gen", summary: "generate an Ed25519 firmware-signing key pair", run: runKeysGen},
		}},
	}
}

// run runs the command named by args; help is not an error.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdout: stdout, stderr: stderr}
	err := dispatch(ctx, e, nil, commandTree(), args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// dispatch finds the subcommand of a group (path) named by args[0].
func dispatch(ctx context.Context, e env, path []string, cs []command, args []string) error {
	if len(args) == 0 {
		usage(e.stderr, path, cs)
		return usageError{"missing command; " + helpHint(path)}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(e.stdout, path, cs)
		return flag.ErrHelp
	}
	for _, c := range cs {
		if c.name != args[0] {
			continue
		}
		if c.sub != nil {
			return dispatch(ctx, e, append(path, c.name), c.sub, args[1:])
		}
		return c.run(ctx, e, args[1:])
	}
	return usageError{fmt.Sprintf("unknown command %q; %s", strings.Join(append(path, args[0]), " "), helpHint(path))}
}

func helpHint(path []string) string {
	return fmt.Sprintf("run %q for the list", strings.Join(append(append([]string{"ecowatt"}, path...), "--help"), " "))
}

// usage lists a group's commands; at the top it adds what every client
// command shares.
func usage(w io.Writer, path []string, cs []command) {
	name := strings.Join(append([]string{"ecowatt"}, path...), " ")
	if len(path) == 0 {
		fmt.Fprint(w, "ecowatt — fleet backend for solar-inverter gateways\n\n")
	}
	fmt.Fprintf(w, "Usage: %s COMMAND [flags]\n\nCommands:\n", name)
	for _, c := range cs {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"%s COMMAND --help\" for a command's flags.\n", name)
	if len(path) > 0 {
		return
	}
	fmt.Fprintf(w, `
Every flag of serve has an environment equivalent: --http-addr is
ECOWATT_HTTP_ADDR. Client commands reach the server at --server
(ECOWATT_SERVER, default http://127.0.0.1:8080) with --admin-token
(ECOWATT_ADMIN_TOKEN), or else the token "ecowatt login" stored in the
user's config dir (ecowatt/token); their other flags are given on the
command line only.
Most print a table, or the server's JSON with -o json.

Exit status:
  %d  success (and --help)
  %d  the server or the command failed (a rejected value, a command that did not succeed)
  %d  usage: an unknown command or flag, a missing argument, a bad value
  %d  not found: the server knows no such device, command, firmware or rollout
  %d  unauthorized or forbidden: a missing, wrong or revoked token, or a role too low
`, exitOK, exitFailed, exitUsage, exitNotFound, exitDenied)
}

// Exit statuses, listed by `ecowatt --help`.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitNotFound = 3
	exitDenied   = 4
)

// exitCode maps an error to the process exit status: the one place that
// turns usage mistakes and the server's HTTP status into one.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	if _, ok := errors.AsType[usageError](err); ok {
		return exitUsage
	}
	if _, ok := errors.AsType[flagenv.UsageError](err); ok {
		return exitUsage
	}
	if a, ok := errors.AsType[*apiError](err); ok {
		switch a.Status {
		case http.StatusNotFound:
			return exitNotFound
		case http.StatusUnauthorized, http.StatusForbidden:
			return exitDenied
		}
	}
	return exitFailed
}
