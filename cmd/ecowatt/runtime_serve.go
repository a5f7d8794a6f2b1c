package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// runtimeConfig are serve's flags for the Go runtime: a soft memory limit
// and an opt-in profiling listener.
type runtimeConfig struct {
	memoryLimit     string
	memoryBase      string
	memoryPerDevice string
	pprofAddr       string
}

func (c *runtimeConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.memoryLimit, "memory-limit", "auto", "soft memory limit of the Go runtime (runtime/debug.SetMemoryLimit): a size such as 512MiB or 2GiB, "+
		"off, or auto: --memory-base + --memory-per-device × connected clients, never below 1.25 × the live heap (GOMEMLIMIT, when set, wins over auto)")
	fs.StringVar(&c.memoryBase, "memory-base", "64MiB", "with --memory-limit auto: the limit with no client connected")
	fs.StringVar(&c.memoryPerDevice, "memory-per-device", "32KiB", "with --memory-limit auto: the limit added per connected MQTT client")
	fs.StringVar(&c.pprofAddr, "pprof-addr", "", "serve /debug/pprof/ on this loopback address (e.g. 127.0.0.1:6060); off when empty")
}

// parseByteSize reads a size the way GOMEMLIMIT does: an integer with an
// optional B, KiB, MiB, GiB or TiB suffix.
func parseByteSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("want a positive size such as 512MiB or 2GiB")
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size too large")
	}
	return n * mult, nil
}

// applyMemoryLimit sets the runtime's soft memory limit from
// --memory-limit. For auto it returns the budget of the controller to run
// (memlimit_serve.go), or nil when GOMEMLIMIT already set a limit.
func (c runtimeConfig) applyMemoryLimit(getenv func(string) string, log zerolog.Logger) (*memBudget, error) {
	switch c.memoryLimit {
	case "off":
		return nil, nil
	case "auto", "":
		var b memBudget
		var err error
		if b.base, err = parseByteSize(c.memoryBase); err != nil {
			return nil, usageError{fmt.Sprintf("--memory-base %q: %v", c.memoryBase, err)}
		}
		if b.perDevice, err = parseByteSize(c.memoryPerDevice); err != nil {
			return nil, usageError{fmt.Sprintf("--memory-per-device %q: %v", c.memoryPerDevice, err)}
		}
		if v := getenv("GOMEMLIMIT"); v != "" {
			log.Info().Str("GOMEMLIMIT", v).Msg("Go memory limit from GOMEMLIMIT; not following the fleet")
			return nil, nil
		}
		return &b, nil
	}
	n, err := parseByteSize(c.memoryLimit)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--memory-limit %q: %v (or auto, off)", c.memoryLimit, err)}
	}
	debug.SetMemoryLimit(n)
	log.Info().Int64("bytes", n).Msg("Go memory limit set")
	return nil, nil
}

// listenPprof opens the profiling listener, refusing any address that is
// not loopback: profiles expose memory contents and cost CPU.
func (c runtimeConfig) listenPprof() (net.Listener, error) {
	if c.pprofAddr == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(c.pprofAddr)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--pprof-addr %q: %v", c.pprofAddr, err)}
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, usageError{fmt.Sprintf("--pprof-addr %q: only a loopback address (127.0.0.1, ::1, localhost) is allowed", c.pprofAddr)}
	}
	ln, err := net.Listen("tcp", c.pprofAddr)
	if err != nil {
		return nil, fmt.Errorf("pprof listen: %w", err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		ln.Close()
		return nil, usageError{fmt.Sprintf("--pprof-addr %q resolved to %s, not loopback", c.pprofAddr, ln.Addr())}
	}
	return ln, nil
}

// servePprof serves /debug/pprof/ on ln until ctx ends.
func servePprof(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { // owned: servePprof waits for it
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	<-done
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
