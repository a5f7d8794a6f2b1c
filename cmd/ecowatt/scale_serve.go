package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/lease"
	"github.com/ecowatt/ecowatt/backend/mqttbus"
	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/broker/authhttp"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// scaleConfig are serve's flags for running as one of several replicas
// behind an external broker.
type scaleConfig struct {
	brokerURL, brokerUser, brokerPassword, brokerCA string
	replicaID                                       string
	brokerInsecure                                  bool
	cluster                                         bool // replica mode (cluster_serve.go)
}

func (c *scaleConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.brokerURL, "broker-url", "", "external MQTT broker (tcp://, ssl://, ws://, wss://); set: no embedded broker, the backend joins the shared subscription and serves /mqtt/ auth callbacks")
	fs.StringVar(&c.brokerUser, "broker-user", "", "the replicas' account on the external broker (a superuser for the /mqtt/ auth callbacks)")
	fs.StringVar(&c.brokerPassword, "broker-password", "", "password of --broker-user")
	fs.StringVar(&c.brokerCA, "broker-ca", "", "PEM CA bundle to verify the external broker's TLS certificate")
	fs.BoolVar(&c.brokerInsecure, "broker-insecure", false, "acknowledge an external broker without --broker-user (anonymous: it must then enforce device auth and ACLs by itself, or anyone can publish and subscribe); without it serve refuses to start")
	fs.BoolVar(&c.cluster, "cluster", false, "replica mode: one of several replicas, each with its embedded broker, sharing --redis (Redis >= 7, sharded pub/sub); downlinks and events are routed between them (OPERATIONS.md, Scaling out)")
	fs.StringVar(&c.replicaID, "replica-id", "", "this replica's identity in logs, /metrics and leases (default: host name and a random suffix)")
}

// replicaIdentity returns the configured replica ID or a generated one.
func (c *scaleConfig) replicaIdentity() (string, error) {
	if c.replicaID == "" {
		return lease.ReplicaID(rand.Reader), nil
	}
	if strings.ContainsAny(c.replicaID, " \t\n/+#") || len(c.replicaID) > 128 {
		return "", usageError{fmt.Sprintf("--replica-id %q: no spaces, '/', '+' or '#', at most 128 characters", c.replicaID)}
	}
	return c.replicaID, nil
}

// replicaInfo is ecowatt_replica_info{replica="..."} 1.
func replicaInfo(reg prometheus.Registerer, replica string) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "ecowatt_replica_info",
		Help:        "Identity of this backend replica (always 1).",
		ConstLabels: prometheus.Labels{"replica": replica},
	})
	g.Set(1)
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("register replica info: %w", err)
	}
	return nil
}

// messaging is serve's broker side: the embedded mochi broker, or an
// external broker reached through mqttbus.
type messaging struct {
	brk *broker.Server // embedded mode
	ext *mqttbus.Bus   // external mode
	url string         // external mode

	// external mode: the broker's auth/ACL callbacks, built by observe
	authCfg authhttp.Config
	auth    http.Handler
}

// newMessaging builds the broker side on the accounts; the backend is
// built on it and then added by observe.
func newMessaging(ctx context.Context, c serveConfig, replica string, accounts brokerAccounts, log zerolog.Logger, reg prometheus.Registerer) (*messaging, error) {
	if c.scale.brokerURL == "" {
		brk, err := broker.New(broker.Config{
			MQTTAddr:   c.mqttAddr,
			MQTTSAddr:  c.mqttsAddr,
			TLSCert:    c.tlsCert,
			TLSKey:     c.tlsKey,
			WSAddr:     c.wsAddr,
			Devices:    accounts,
			Operators:  accounts,
			Logger:     log,
			Registerer: reg,
		})
		if err != nil {
			return nil, err
		}
		return &messaging{brk: brk}, nil
	}
	if (c.scale.brokerUser == "") != (c.scale.brokerPassword == "") {
		return nil, usageError{"--broker-user and --broker-password go together"}
	}
	if c.scale.brokerUser == "" {
		if !c.scale.brokerInsecure {
			return nil, usageError{"--broker-url without --broker-user: the replicas would log in anonymously, so the broker lets anyone in " +
				"and no EcoWatt auth or ACL applies; set --broker-user/--broker-password (a superuser of the broker's auth plugin pointed at /mqtt/), " +
				"or pass --broker-insecure (ECOWATT_BROKER_INSECURE=true) if the broker enforces auth and ACLs by itself"}
		}
		log.Warn().Str("event", "security").Str("broker", c.scale.brokerURL).
			Msg("INSECURE: --broker-insecure: logging in to the external broker anonymously; EcoWatt's device auth and ACLs apply only if the broker calls /mqtt/")
	}
	bus, err := mqttbus.Dial(ctx, mqttbus.Config{
		URL:      c.scale.brokerURL,
		Username: c.scale.brokerUser,
		Password: c.scale.brokerPassword,
		CAFile:   c.scale.brokerCA,
		ClientID: "ecowatt-" + replica,
		Logger:   log,
	})
	if err != nil {
		return nil, err
	}
	log.Info().Str("broker", c.scale.brokerURL).Msg("external broker mode: no embedded broker; auth callbacks under /mqtt/")
	return &messaging{ext: bus, url: c.scale.brokerURL, authCfg: authhttp.Config{
		Auth:      broker.Authenticator{Devices: accounts, Operators: accounts},
		Roles:     accounts,
		Superuser: c.scale.brokerUser, SuperuserPassword: c.scale.brokerPassword,
		Logger: log,
	}}, nil
}

// observe makes svc the observer of the broker's connections and
// rejections: svc publishes the events they cause through the broker, so
// it exists only after the broker (see broker.Server.Observe). It must run
// before start.
func (m *messaging) observe(svc *backend.Service, log zerolog.Logger) error {
	onReject := func(r broker.Rejection) {
		if r.Operator { // an operator's name may equal a device's ID: keep the namespaces apart
			svc.OperatorSecurityEvent(context.Background(), r.Username, r.Reason, r.Detail)
			return
		}
		svc.BrokerRejection(context.Background(), r.Username, r.Reason, r.Detail) // sampled: junk logins must not flood a device timeline
	}
	if m.brk != nil {
		return m.brk.Observe(svc, onReject)
	}
	cfg := m.authCfg
	cfg.OnReject = onReject
	auth, err := authhttp.Handler(cfg)
	if err != nil {
		return err
	}
	m.auth = auth
	return nil
}

func (m *messaging) bus() backend.Bus {
	if m.ext != nil {
		return m.ext
	}
	return m.brk
}

// start opens the embedded broker's listeners.
func (m *messaging) start() error {
	if m.brk != nil {
		return m.brk.Start()
	}
	return nil
}

func (m *messaging) ready() error {
	switch {
	case m.ext != nil && !m.ext.Connected():
		return errors.New("external broker not connected")
	case m.brk != nil && !m.brk.Listening():
		return errors.New("broker not listening")
	}
	return nil
}

func (m *messaging) close() error {
	if m.ext != nil {
		return m.ext.Close()
	}
	return m.brk.Close()
}

// addrs are the MQTT addresses for the ready file and the log.
func (m *messaging) addrs() map[string]string {
	if m.ext != nil {
		return map[string]string{"broker": m.url}
	}
	a := map[string]string{"mqtt": m.brk.Addr().String()}
	if t := m.brk.TLSAddr(); t != nil {
		a["mqtts"] = t.String()
	}
	if w := m.brk.WSAddr(); w != nil {
		a["ws"] = w.String()
	}
	return a
}

// deviceURL is where in-process demo devices connect.
func (m *messaging) deviceURL() string {
	if m.ext != nil {
		return m.url
	}
	return "tcp://" + loopback(m.brk.Addr())
}

// handler adds the external broker's auth callbacks (under /mqtt/) to api.
func (m *messaging) handler(api http.Handler) http.Handler {
	if m.auth == nil {
		return api
	}
	mux := http.NewServeMux()
	mux.Handle("/mqtt/", m.auth)
	mux.Handle("/", api)
	return mux
}

// brokerAccounts are the backend's accounts as the broker asks for them
// (broker.DeviceAuth, broker.DeviceGate, broker.OperatorAuth,
// authhttp.Roles): the same
// methods, with "not found" as the broker's sentinel errors (the backend
// does not import the broker).
type brokerAccounts struct{ *backend.Accounts }

var (
	_ broker.DeviceAuth     = brokerAccounts{}
	_ broker.DeviceGate     = brokerAccounts{}
	_ broker.OperatorAuth   = brokerAccounts{}
	_ authhttp.Roles        = brokerAccounts{}
	_ broker.Presence       = (*backend.Service)(nil)
	_ backend.Bus           = (*broker.Server)(nil)
	_ backend.SessionCloser = (*broker.Server)(nil) // disable and decommission close the device's session
	_ backend.Bus           = (*mqttbus.Bus)(nil)
)

func (a brokerAccounts) DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error) {
	k, err := a.Accounts.DeviceKeys(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", broker.ErrUnknownDevice, id)
	}
	return k, err
}

// AdmitDevice refuses a disabled or decommissioned device (read from
// Redis at every connect, so a change on another replica counts at once).
func (a brokerAccounts) AdmitDevice(ctx context.Context, id string) error {
	err := a.Accounts.DeviceAccess(ctx, id)
	switch {
	case errors.Is(err, backend.ErrDisabled):
		return fmt.Errorf("%w: %s", broker.ErrDeviceDisabled, id)
	case errors.Is(err, backend.ErrDecommissioned):
		return fmt.Errorf("%w: %s", broker.ErrDeviceDecommissioned, id)
	}
	return err
}

func (a brokerAccounts) AuthenticateOperator(ctx context.Context, name, password string) (topics.Role, error) {
	role, err := a.Accounts.AuthenticateOperator(ctx, name, password)
	if errors.Is(err, backend.ErrNotFound) {
		return "", fmt.Errorf("%w: %s", broker.ErrUnknownOperator, name)
	}
	return role, err
}

func (a brokerAccounts) OperatorRole(ctx context.Context, name string) (topics.Role, error) {
	role, err := a.Accounts.OperatorRole(ctx, name)
	if errors.Is(err, backend.ErrNotFound) {
		return "", fmt.Errorf("%w: %s", broker.ErrUnknownOperator, name)
	}
	return role, err
}
