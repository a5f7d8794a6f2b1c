// Command ecowatt-bench is EcoWatt's load harness (docs/BENCHMARKS.md). It
// drives any MQTT broker on loopback with N publishers and M subscribers on
// paho, bounded in count and time, and measures delivered msgs/s, loss and
// latency from a send timestamp and sequence carried in every payload.
//
//	ecowatt-bench run             one load run against a broker URL
//	ecowatt-bench broker          the embedded EcoWatt broker alone, auth and ACL on
//	ecowatt-bench mosquitto-conf  a Mosquitto config with the same rules
//	ecowatt-bench suite           every scenario on both brokers: JSON + docs/BENCHMARKS.md
//	ecowatt-bench compare         the change between two recorded runs
//	ecowatt-bench idle            RSS per idle connection of a broker process
//
// The suite's fleet, commands, fota and redis parts load a running
// `ecowatt serve` (its own process, on Redis) with devicesim devices run in
// this process, and read the server's RSS and CPU from /proc.
//
// scripts/bench.sh (make bench) wires them together. Every figure the suite
// records is also given as a ratio against a reference measured in the same
// run (Mosquitto, a bare HMAC), because the machine is shared and noisy.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ecowatt/ecowatt/cmd/ecowatt-bench/internal/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, now: time.Now, rand: rand.Reader})
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "ecowatt-bench:", err)
		}
		code := 1
		if errors.As(err, new(usageError)) || errors.Is(err, flag.ErrHelp) {
			code = 2
		}
		os.Exit(code)
	}
}

// env is what a command may touch, injected so tests run commands in-process.
type env struct {
	stdout, stderr io.Writer
	now            func() time.Time
	rand           io.Reader
}

// usageError is a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type command struct {
	name, summary string
	run           func(context.Context, env, []string) error
}

func commands() []command {
	return []command{
		{"run", "one load run against a broker URL", runLoad},
		{"broker", "the embedded EcoWatt broker alone, device auth and ACL on", runBroker},
		{"mosquitto-conf", "write a Mosquitto config, password and ACL files with the same rules", runMosquittoConf},
		{"suite", "run the scenarios on both brokers; write JSON and docs/BENCHMARKS.md", runSuite},
		{"compare", "print the change between two recorded runs (OLD.json NEW.json)", runCompare},
		{"idle", "RSS per idle connection of a broker process (e.g. Mosquitto)", runIdle},
	}
}

func run(ctx context.Context, args []string, e env) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stdout, "Usage: ecowatt-bench COMMAND [flags]\n\nCommands:")
		for _, c := range commands() {
			fmt.Fprintf(e.stdout, "  %-15s %s\n", c.name, c.summary)
		}
		if len(args) == 0 {
			return usageError{"missing command"}
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

func newFlags(e env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: ecowatt-bench %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// targetFlags are the flags that say how to log in to one broker.
type targetFlags struct {
	url, keys, creds, subUser, subPassword *string
	direct                                 *bool
}

func addTargetFlags(fs *flag.FlagSet, prefix, name string) targetFlags {
	return targetFlags{
		url:         fs.String(prefix+"url", "", name+" broker URL, tcp://127.0.0.1:PORT (loopback only)"),
		keys:        fs.String(prefix+"keys", "", name+` devices' keys file {"ID":"hex PSK"}: log in with envelope password tokens`),
		creds:       fs.String(prefix+"creds", "", name+" devices' ID:password file (e.g. mosquitto-conf's devices.txt)"),
		subUser:     fs.String(prefix+"sub-user", "bench-sub", name+" subscriber's user name"),
		subPassword: fs.String(prefix+"sub-password", "", name+" subscriber's password"),
		direct: fs.Bool(prefix+"direct", false, name+" subscribers read the devices' up/ topics, not "+
			"ecowatt/v1/events/ (default: direct with --creds, relayed with --keys)"),
	}
}

// target builds the target named name from the flags.
func (f targetFlags) target(e env, name string) (target, error) {
	if *f.url == "" || (*f.keys == "") == (*f.creds == "") {
		return target{}, usageError{name + ": give a broker URL and exactly one of a keys file and a credentials file"}
	}
	var t target
	if *f.keys != "" {
		keys, ids, err := readKeys(*f.keys)
		if err != nil {
			return target{}, err
		}
		t = ecowattTarget(*f.url, keys, ids, *f.subUser, *f.subPassword, e.now)
		t.relayed = !*f.direct
	} else {
		pw, ids, err := readCreds(*f.creds)
		if err != nil {
			return target{}, err
		}
		t = staticTarget(name, *f.url, pw, ids, *f.subUser, *f.subPassword)
	}
	t.name = name
	return t, nil
}

// runLoad is `ecowatt-bench run`.
func runLoad(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "run", "run --url URL (--keys FILE | --creds FILE) [flags]")
	tf := addTargetFlags(fs, "", "the")
	mode := fs.String("mode", modeFanIn, "fanin (every publisher to each subscriber) or pairs (publisher i to subscriber i)")
	pubs := fs.Int("pubs", 100, "publishers (provisioned devices)")
	subs := fs.Int("subs", 1, "subscribers, fanin mode")
	qos := fs.Uint("qos", 1, "QoS of publishes and subscriptions, 0 or 1")
	size := fs.Int("size", 256, "payload bytes")
	count := fs.Int("count", 1000, "messages per publisher (a bound)")
	rate := fs.Float64("rate", 0, "messages/s per publisher; 0 = as fast as --inflight allows")
	totalRate := fs.Float64("total-rate", 0, "messages/s over all publishers (overrides --rate)")
	duration := fs.Duration("duration", time.Minute, "bound on the send phase")
	inflight := fs.Int("inflight", 64, "unfinished publishes per publisher")
	jsonOut := fs.String("json", "", "also write the result as JSON here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := tf.target(e, "target")
	if err != nil {
		return err
	}
	s := scenario{Name: "run", Mode: *mode, Pubs: *pubs, Subs: *subs, QoS: byte(min(*qos, 255)), Size: *size,
		Count: *count, Rate: *rate, Duration: duration.Seconds()}
	if *totalRate > 0 && *pubs > 0 {
		s.Rate = *totalRate / float64(*pubs)
	}
	if s.Mode == modePairs {
		s.Subs = s.Pubs
	}
	cfg, err := s.config(t)
	if err != nil {
		return usageError{err.Error()}
	}
	cfg.Inflight, cfg.Now = *inflight, e.now
	cfg.Progress = progressTo(e.stderr, s.String())
	fmt.Fprintf(e.stderr, "ecowatt-bench run: %s against %s\n", s, t.url)
	res, err := load.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, summary(res))
	if *jsonOut != "" {
		return writeJSON(*jsonOut, res, 0o644)
	}
	return nil
}
