package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/httpapi"
	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/backend/telemetry"
	"github.com/ecowatt/ecowatt/topics"
)

// serveConfig is everything `ecowatt serve` is configured with.
type serveConfig struct {
	httpAddr, mqttAddr, mqttsAddr, wsAddr string
	tlsCert, tlsKey                       string
	redisURL, redisPrefix, dataDir        string
	adminToken, operator                  string
	logLevel, logFormat                   string
	readyFile                             string
	cmd                                   commandConfig
	fota                                  fotaConfig
	jobs                                  jobConfig
	scale                                 scaleConfig
	runtime                               runtimeConfig
	presence                              presenceConfig
	configSweep, configLease              time.Duration
	indexRepair                           time.Duration
	telemetryRetention                    time.Duration
	demo                                  int
	uplinkWorkers                         int
	encryptDownlinks                      bool
	keyOverlap, keyResend                 time.Duration
}

func runServe(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "serve", "serve [flags]")
	var c serveConfig
	fs.StringVar(&c.httpAddr, "http-addr", ":8080", "HTTP API, dashboard and /metrics listen address")
	fs.StringVar(&c.mqttAddr, "mqtt-addr", ":1883", "MQTT TCP listen address")
	fs.StringVar(&c.mqttsAddr, "mqtts-addr", ":8883", "MQTT TLS listen address (with --tls-cert and --tls-key)")
	fs.StringVar(&c.wsAddr, "ws-addr", "", "MQTT over WebSocket listen address (off when empty)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM server certificate for MQTTS (see ecowatt certs gen)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM server private key for MQTTS")
	fs.StringVar(&c.redisURL, "redis", "", "Redis URL (redis://, rediss://, redis+cluster://, redis+sentinel://); empty: in-process store, not durable")
	fs.StringVar(&c.redisPrefix, "redis-prefix", "ecowatt:", "prefix of every Redis key")
	fs.StringVar(&c.dataDir, "data-dir", "./data", "directory for the master key (and firmware keys)")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token for the HTTP API; generated and printed when empty")
	fs.Var((*listFlag)(&c.operator), "operator", "bootstrap operator accounts: NAME:PASSWORD[:admin|operator|viewer], comma-separated or repeated (default role admin)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "console", "console or json")
	fs.DurationVar(&c.configSweep, "config-sweep", 30*time.Second, "how often unacknowledged config versions are sent again to online devices")
	fs.DurationVar(&c.configLease, "config-lease", 0, "lifetime of the Redis lease that makes one replica run the config sweep (default: 3 --config-sweep)")
	fs.DurationVar(&c.indexRepair, "index-repair-interval", 10*time.Minute, "how often the label and online indexes are checked against the device hashes and repaired (also once at start-up; one replica at a time, under a Redis lease)")
	fs.StringVar(&c.readyFile, "ready-file", "", "write the bound addresses as JSON to this file once serving (for scripts and tests)")
	fs.DurationVar(&c.telemetryRetention, "telemetry-retention", 7*24*time.Hour, "how long telemetry batches are kept in Redis")
	fs.IntVar(&c.uplinkWorkers, "uplink-workers", 32, "device message workers (shards by device; each waits on Redis round trips, so more than the cores)")
	fs.BoolVar(&c.encryptDownlinks, "encrypt-downlinks", false, "seal every JSON downlink with AES-256-GCM as well as the MAC (devices accept both; PROTOCOL.md section 4)")
	fs.DurationVar(&c.keyOverlap, "key-overlap", backend.DefaultKeyOverlap, "how long a rotated device key stays pending; after it the new key is dropped and the old one stays (PROTOCOL.md section 15)")
	fs.DurationVar(&c.keyResend, "key-resend", backend.DefaultKeyResend, "how often a pending key rotation is sent again to an online device that has not answered")
	fs.IntVar(&c.demo, "demo", 0, "provision N demo devices and run them in-process (a live dashboard at once)")
	c.cmd.register(fs)
	c.fota.register(fs)
	c.jobs.register(fs)
	c.scale.register(fs)
	c.runtime.register(fs)
	c.presence.register(fs)
	if _, err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if err := c.presence.check(); err != nil {
		return err
	}
	if c.indexRepair <= 0 {
		return usageError{fmt.Sprintf("--index-repair-interval %s: must be positive", c.indexRepair)}
	}
	if err := checkCluster(c); err != nil {
		return err
	}
	log, err := newLogger(e, c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	return serve(ctx, e, c, log)
}

// newLogger builds the root logger. Each package adds its own "component"
// field in its constructor (it knows its name, and every caller gets it), so
// cmd passes this logger on bare: adding one here too would repeat the key
// in every JSON line.
func newLogger(e env, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, usageError{fmt.Sprintf("--log-level %q: %v", level, err)}
	}
	w := e.stderr
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: e.stderr, TimeFormat: time.TimeOnly}
	default:
		return zerolog.Logger{}, usageError{fmt.Sprintf("--log-format %q: want console or json", format)}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// serve runs broker, backend and HTTP server until ctx ends, then stops them
// within a few seconds.
func serve(ctx context.Context, e env, c serveConfig, log zerolog.Logger) error {
	replica, err := c.scale.replicaIdentity()
	if err != nil {
		return err
	}
	log = log.With().Str("replica", replica).Logger()
	fleetBudget, err := c.runtime.applyMemoryLimit(e.getenv, log)
	if err != nil {
		return err
	}
	pprofLn, err := c.runtime.listenPprof()
	if err != nil {
		return err
	}
	if pprofLn != nil {
		defer pprofLn.Close()
	}
	if c.adminToken == "" {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		c.adminToken = hex.EncodeToString(b)
		log.Warn().Str("admin_token", c.adminToken).Msg("no ECOWATT_ADMIN_TOKEN given; generated one for this run")
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	vault, err := keyvault.Open(c.dataDir, rand.Reader)
	if err != nil {
		return err
	}
	if _, err := store.NewKeys(c.redisPrefix); err != nil {
		return usageError{fmt.Sprintf("--redis-prefix: %v", err)}
	}
	rdb, closeRedis, err := store.Open(ctx, c.redisURL, log)
	if err != nil {
		return err
	}
	defer closeRedis()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := replicaInfo(reg, replica); err != nil {
		return err
	}
	// Wiring order: the accounts (what the broker needs to let anyone in),
	// the broker on them, the backend on the broker, then the backend as
	// the broker's observer of connections and rejections (whose events
	// it publishes through the broker), before the listeners open.
	accounts, err := backend.NewAccounts(backend.AccountsConfig{
		Redis: rdb, Prefix: c.redisPrefix, Vault: vault, Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	brk, err := newMessaging(ctx, c, replica, brokerAccounts{accounts}, log, reg)
	if err != nil {
		return err
	}
	defer brk.close()
	rt, err := newRouter(c, brk, rdb, replica, log, reg) // nil unless --cluster
	if err != nil {
		return err
	}
	bcfg := backend.Config{
		Accounts:   accounts,
		Bus:        rt.bus(brk.bus()),
		Logger:     log,
		Random:     rand.Reader,
		Registerer: reg,
		Workers:    c.uplinkWorkers,

		EncryptDownlink: c.encryptDownlinks,
		KeyOverlap:      c.keyOverlap,
		KeyResend:       c.keyResend,
		Replica:         replica,
		Connections:     brk.connections(),
	}
	c.presence.apply(&bcfg)
	rt.configure(&bcfg)
	svc, err := backend.New(bcfg)
	if err != nil {
		return err
	}
	rt.attach(svc)
	if err := brk.observe(svc, log); err != nil {
		return err
	}
	keys := svc.Keys() // one key builder for every service
	cfgSvc, err := config.New(config.Config{
		Redis:         rdb,
		Keys:          keys,
		Fleet:         svc,
		Logger:        log,
		Registerer:    reg,
		SweepInterval: c.configSweep,
		Replica:       replica,
		LeaseTTL:      c.configLease,
	})
	if err != nil {
		return err
	}
	cfgSvc.Attach()
	tm, err := telemetry.New(telemetry.Config{
		Redis:      rdb,
		Keys:       keys,
		Logger:     log,
		Registerer: reg,
		Retention:  c.telemetryRetention,
	})
	if err != nil {
		return err
	}
	svc.HandleChecked(topics.KindTelemetry, tm.IngestChecked(svc)) // one script per batch, the replay check included
	cmds, err := newCommands(c.cmd, rdb, keys, replica, svc, log, reg)
	if err != nil {
		return err
	}
	fw, err := newFOTA(c.fota, c.dataDir, rdb, keys, replica, svc, log, reg)
	if err != nil {
		return err
	}
	jobSvc, err := newJobs(c.jobs, rdb, keys, replica, svc, brk.bus(), cfgSvc, cmds, fw, log, reg)
	if err != nil {
		return err
	}
	ops, err := parseOperators(c.operator)
	if err != nil {
		return err
	}
	for _, op := range ops {
		if err := svc.EnsureOperator(ctx, op.name, op.password, op.role); err != nil {
			return err
		}
	}
	if err := brk.start(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		return fmt.Errorf("http listen: %w", err)
	}
	handler := brk.handler(httpapi.NewServer(httpapi.Deps{
		Fleet:      svc,
		Commands:   cmds,
		AdminToken: c.adminToken,
		Logger:     log,
		Gatherer:   reg,
		Configs:    cfgSvc,
		Telemetry:  tm,
		FOTA:       fw,
		Jobs:       jobSvc,
		Rollouts:   jobs.NewRollouts(jobSvc, fw),
		Ready:      rt.ready(brk.ready),
	}))
	// Requests run under reqCtx, cancelled when shutdown starts, so that
	// long-lived event streams end instead of holding Shutdown up.
	reqCtx, stopRequests := context.WithCancel(context.Background())
	defer stopRequests()
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return reqCtx }}
	hs.RegisterOnShutdown(stopRequests)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error { return cmds.Run(gctx) })
	g.Go(func() error { return cfgSvc.Run(gctx) })
	g.Go(func() error { return fw.Run(gctx) })
	// Index writes cannot share a device's slot on Redis Cluster, so a
	// replica that dies between the two leaves an index wrong until this
	// pass (docs/DECISIONS.md).
	g.Go(func() error { return svc.RunIndexRepair(gctx, replica, c.indexRepair) })
	g.Go(func() error { return jobSvc.Run(gctx) })
	if rt != nil {
		g.Go(func() error { return rt.Run(gctx) })
	}
	if fleetBudget != nil {
		mc := &memController{budget: *fleetBudget, clients: gaugeReader(reg, "ecowatt_broker_clients_connected"),
			log: log.With().Str("component", "memlimit").Logger()}
		g.Go(func() error { return mc.run(gctx) })
	}
	if pprofLn != nil {
		log.Warn().Str("addr", pprofLn.Addr().String()).Msg("profiling on /debug/pprof/ (--pprof-addr)")
		g.Go(func() error { return servePprof(gctx, pprofLn) })
	}
	if c.demo > 0 {
		demo := demoFleet{n: c.demo, svc: svc, broker: brk.deviceURL(), dataDir: c.dataDir,
			log: log.With().Str("component", "demo").Logger(), setup: demoSetup(fw.PublicKey())}
		g.Go(func() error { return demo.run(gctx) })
	}
	g.Go(func() error {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
		return brk.close()
	})
	addrs := brk.addrs()
	addrs["http"] = ln.Addr().String()
	if pprofLn != nil {
		addrs["pprof"] = pprofLn.Addr().String()
	}
	log.Info().Interface("addrs", addrs).Msg("ecowatt serving")
	if c.readyFile != "" {
		b, _ := json.Marshal(addrs)
		if err := os.WriteFile(c.readyFile, b, 0o600); err != nil {
			log.Error().Err(err).Msg("write ready file")
		}
	}
	err = g.Wait()
	log.Info().Msg("ecowatt stopped")
	return err
}

type operatorSpec struct {
	name, password string
	role           topics.Role
}

// parseOperators reads "alice:secret,bob:pw:viewer". A trailing ":admin",
// ":operator" or ":viewer" is the role (default admin); anything else
// after the first colon is the password (which may hold colons but not
// commas).
func parseOperators(s string) ([]operatorSpec, error) {
	if s == "" {
		return nil, nil
	}
	var out []operatorSpec
	for _, item := range strings.Split(s, ",") {
		name, rest, ok := strings.Cut(item, ":")
		op := operatorSpec{name: name, password: rest, role: topics.RoleAdmin}
		for _, r := range topics.Roles {
			if p, found := strings.CutSuffix(rest, ":"+string(r)); found {
				op.password, op.role = p, r
			}
		}
		if !ok || op.name == "" || op.password == "" {
			return nil, usageError{"--operator / ECOWATT_OPERATOR: want NAME:PASSWORD[:admin|operator|viewer], comma-separated"}
		}
		out = append(out, op)
	}
	return out, nil
}
