// Package broker embeds the mochi MQTT server as EcoWatt's broker: TCP, TLS
// and WebSocket listeners, device and operator authentication, the
// per-account ACL of docs/PROTOCOL.md §1 (wills included), packet, session
// and queue limits, and lossless delivery to slow subscribers.
//
// Devices log in with username = device ID and a password token
// (envelope.Password); operators with a name and password. The backend talks
// to the broker in-process through Publish and Subscribe, which bypass the ACL.
//
// mochi drops a message when a subscriber's outbound queue is full, even at
// QoS 1. This package closes that gap for every subscriber, device or
// operator, with backpressure: a publisher waits while the subscriber's queue
// is nearly full, and a message mochi still drops is queued again, in order,
// instead of being lost. A subscriber that stops reading is cut off after
// SlowClientTimeout (devices, 2 s by default) or OperatorSlowTimeout
// (operators, 1 s). Writes go through a per-connection backlog
// (writeconn.go), so no publisher waits on a device's socket; a stalled
// viewer holds publishers at most its timeout (see flow.go and
// docs/DECISIONS.md).
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// DeviceAuth finds a provisioned device's keys.
type DeviceAuth interface {
	// DeviceKeys returns the keys of device id, or an error wrapping
	// ErrUnknownDevice when id is not provisioned.
	DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error)
}

// RotatingDeviceAuth is a DeviceAuth that may hold a second key for a
// device during a key rotation (PROTOCOL.md section 15). When the key of
// DeviceKeys refuses a password as wrong, the broker asks
// VerifyDevicePassword, which also tries the pending key.
type RotatingDeviceAuth interface {
	VerifyDevicePassword(ctx context.Context, id, password string, now time.Time) error
}

// ErrUnknownDevice is wrapped by DeviceAuth when a device is not provisioned.
var ErrUnknownDevice = errors.New("unknown device")

// ErrUnknownOperator may be wrapped by OperatorAuth when the name is not an
// operator account; the rejection is then reported as "unknown_device"
// rather than "bad_password".
var ErrUnknownOperator = errors.New("unknown operator")

// ErrClosed is returned by Start, Publish and Subscribe after Close.
var ErrClosed = errors.New("broker closed")

// OperatorAuth checks an operator's name and password.
type OperatorAuth interface {
	AuthenticateOperator(ctx context.Context, name, password string) (topics.Role, error)
}

// Rejection describes a refused connection, publish, subscription or packet.
type Rejection struct {
	Username, ClientID string
	Reason             string // one of the Reason* constants
	Detail             string // human-readable, e.g. the topic
	// Operator is set when Username is a known operator account, not a
	// device: its events must not land in the device namespace.
	Operator     bool
	throttleName bool // an operator's wrong password: counts against the name in the login throttle
}

// Message is a message delivered to an in-process subscriber; the type is
// topics.Message so that a Server is a backend.Bus as it is.
type Message = topics.Message

// Config configures a Server. Zero limits take the defaults below.
type Config struct {
	MQTTAddr     string       // TCP listen address, e.g. ":1883"; empty for none
	MQTTListener net.Listener // overrides MQTTAddr; owned by the Server from New on

	MQTTSAddr     string       // TLS listen address, e.g. ":8883"; used when TLSCert and TLSKey are set
	TLSCert       string       // PEM certificate chain file
	TLSKey        string       // PEM private key file
	MQTTSListener net.Listener // overrides MQTTSAddr; owned by the Server from New on

	WSAddr string // optional WebSocket listen address

	MaxPacketSize       int           // bytes; default DefaultMaxPacketSize
	MaxSessionExpiry    time.Duration // cap on persistent sessions; default DefaultMaxSessionExpiry
	ClientWritesPending int           // per-client outbound queue; default DefaultClientWritesPending
	// ClientReadBuffer is the size of each connection's read buffer
	// (bufio.Reader, allocated per client for the life of the connection;
	// larger packets are read through it in several reads); default
	// DefaultClientReadBuffer.
	ClientReadBuffer int
	// ClientWriteBuffer is the most bytes of queued outbound packets
	// coalesced before a write (the buffer exists only while packets are
	// queued); default DefaultClientWriteBuffer.
	ClientWriteBuffer int
	// ClientWriteBacklog is the most bytes of written packets a
	// connection holds while its socket is full (writeconn.go): a device
	// beyond it is disconnected at once, an operator's writes wait; default
	// DefaultClientWriteBacklog.
	ClientWriteBacklog int
	// SlowClientTimeout is how long a device's socket or outbound queue
	// may make no progress before that device is disconnected; default
	// DefaultSlowClientTimeout. No publisher waits on it: writes go through
	// the connection's backlog.
	SlowClientTimeout time.Duration
	// OperatorSlowTimeout is the same for operator subscribers (events),
	// shorter because their publisher is a backend worker: a viewer that
	// stops reading holds backend publishes at most this long, once, before
	// it is cut off; default DefaultOperatorSlowTimeout.
	OperatorSlowTimeout time.Duration

	Devices   DeviceAuth
	Operators OperatorAuth // may be nil: no operator accounts
	Presence  Presence     // may be nil: connection ends are not reported (the will is then the only signal); or set by Observe

	OnReject func(Rejection) // may be nil; called for every auth/ACL/size rejection; or set by Observe

	// Login throttles (throttle.go); zero values take DefaultAddressThrottle
	// and DefaultOperatorThrottle.
	AddressThrottle, OperatorThrottle Throttle
	// Subscription limits (limits.go); zero values take
	// DefaultDeviceSubscriptions and DefaultOperatorSubscriptions.
	DeviceSubscriptions, OperatorSubscriptions SubscriptionLimits

	Logger     zerolog.Logger
	Now        func() time.Time      // default time.Now; checks password tokens
	Registerer prometheus.Registerer // may be nil
}

// Defaults for the zero values of Config.
const (
	DefaultMaxPacketSize    = 256 << 10 // an envelope (envelope.MaxSize) plus headers fits
	DefaultMaxSessionExpiry = 24 * time.Hour
	// DefaultClientWritesPending sizes every client's outbound queue, a
	// channel mochi allocates per connection (8 bytes a slot, 2 KiB at
	// mochi's 256). A device receives rare downlinks and at most
	// fota.MaxWindow (8) chunks in flight; an operator's event stream
	// keeps up through backpressure (flow.go), which admits a publish
	// while the queue has room.
	DefaultClientWritesPending = 64
	// DefaultClientReadBuffer: a device sends a few hundred bytes every
	// 15 s; a larger packet (a FOTA chunk request is small, an operator's
	// command rarely large) is read through it in several reads, and
	// bufio reads a packet body larger than the buffer straight from the
	// socket. mochi's default is 2 KiB.
	DefaultClientReadBuffer  = 512
	DefaultClientWriteBuffer = 2 << 10 // mochi's default
	// DefaultClientWriteBacklog holds a full FOTA window (fota.MaxWindow
	// chunks of 16 KiB) twice over beyond the kernel's socket buffer; the
	// backlog is allocated only while the socket is full.
	DefaultClientWriteBacklog  = 256 << 10
	DefaultSlowClientTimeout   = 2 * time.Second // the publisher is a backend worker
	DefaultOperatorSlowTimeout = time.Second
)

// Server is the EcoWatt broker.
type Server struct {
	cfg   Config
	log   zerolog.Logger
	mochi *mqtt.Server
	m     *metrics

	logins *LoginThrottle // failed logins by source address, by operator name

	mu        sync.Mutex // guards fields below
	idents    map[net.Conn]*identity
	held      deviceConns // device connections Presence numbered (presence.go)
	nextSubID int
	tcp, tls  net.Listener // set by Start (or from Config)
	ws        *wsListener  // set by Start when Config.WSAddr is set
	started   bool

	connectWork *connectWork // CONNECT auth and presence, off the read goroutine

	noBackpressure bool // tests only, set before clients connect: mochi's bare behaviour
	noAdmission    bool // tests only, set before clients connect: exercise redeliver alone

	listening atomic.Bool
	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New builds a Server; Start starts it.
func New(cfg Config) (*Server, error) {
	if cfg.Devices == nil {
		return nil, errors.New("broker: Config.Devices is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxPacketSize <= 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.MaxSessionExpiry <= 0 {
		cfg.MaxSessionExpiry = DefaultMaxSessionExpiry
	}
	if cfg.ClientWritesPending <= 0 {
		cfg.ClientWritesPending = DefaultClientWritesPending
	}
	if cfg.SlowClientTimeout <= 0 {
		cfg.SlowClientTimeout = DefaultSlowClientTimeout
	}
	if cfg.OperatorSlowTimeout <= 0 {
		cfg.OperatorSlowTimeout = DefaultOperatorSlowTimeout
	}
	if cfg.ClientReadBuffer <= 0 {
		cfg.ClientReadBuffer = DefaultClientReadBuffer
	}
	if cfg.ClientWriteBuffer <= 0 {
		cfg.ClientWriteBuffer = DefaultClientWriteBuffer
	}
	if cfg.ClientWriteBacklog <= 0 {
		cfg.ClientWriteBacklog = DefaultClientWriteBacklog
	}
	if cfg.AddressThrottle == (Throttle{}) {
		cfg.AddressThrottle = DefaultAddressThrottle
	}
	if cfg.OperatorThrottle == (Throttle{}) {
		cfg.OperatorThrottle = DefaultOperatorThrottle
	}
	if cfg.DeviceSubscriptions == (SubscriptionLimits{}) {
		cfg.DeviceSubscriptions = DefaultDeviceSubscriptions
	}
	if cfg.OperatorSubscriptions == (SubscriptionLimits{}) {
		cfg.OperatorSubscriptions = DefaultOperatorSubscriptions
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("broker: TLSCert and TLSKey must be given together")
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(min(cfg.MaxPacketSize, math.MaxUint32))
	caps.MaximumSessionExpiryInterval = uint32(min(cfg.MaxSessionExpiry/time.Second, math.MaxUint32))
	caps.MaximumClientWritesPending = int32(min(cfg.ClientWritesPending, math.MaxInt32))
	caps.MaximumInflight = math.MaxUint16 // never drop for inflight quota; packet IDs bound it
	caps.MaximumMessageExpiryInterval = int64(cfg.MaxSessionExpiry / time.Second)

	log := cfg.Logger.With().Str("component", "broker").Logger()
	s := &Server{
		cfg:    cfg,
		log:    log,
		idents: map[net.Conn]*identity{},
		tcp:    cfg.MQTTListener,
		tls:    cfg.MQTTSListener,

		connectWork: newConnectWork(),
		logins:      NewLoginThrottle(cfg.AddressThrottle, cfg.OperatorThrottle),
	}
	s.mochi = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetReadBufferSize:  cfg.ClientReadBuffer,
		ClientNetWriteBufferSize: cfg.ClientWriteBuffer,
		InlineClient:             true,
		Logger:                   newSlogLogger(cfg.Logger.With().Str("component", "mochi").Logger()),
		SysTopicResendInterval:   10,
	})
	m, err := newMetrics(cfg.Registerer, s.mochi.Info)
	if err != nil {
		return nil, fmt.Errorf("broker: metrics: %w", err)
	}
	s.m = m
	if err := s.mochi.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	return s, nil
}

// Observe sets Config.Presence and Config.OnReject after New. It exists
// for an observer built on this Server: the backend records connections
// and rejections as events that it publishes through the broker, so it
// can only be built once the broker exists (cmd/ecowatt: accounts, then
// broker, then backend, then Observe, then Start). It must be called
// before Start; afterwards it is an error and changes nothing.
func (s *Server) Observe(p Presence, onReject func(Rejection)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("broker: Observe after Start")
	}
	s.cfg.Presence, s.cfg.OnReject = p, onReject
	return nil
}

// Start opens the listeners and starts serving; it returns at once.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return ErrClosed
	}
	if s.started {
		return errors.New("broker: already started")
	}
	s.started = true
	if err := s.openListeners(); err != nil {
		return err
	}
	if err := s.mochi.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	s.listening.Store(true)
	var ws net.Listener
	if s.ws != nil {
		ws = s.ws
	}
	s.log.Info().Stringer("mqtt", addrOf(s.tcp)).Stringer("mqtts", addrOf(s.tls)).
		Stringer("ws", addrOf(ws)).Msg("broker listening")
	return nil
}

// openListeners binds and registers every configured listener; s.mu is held.
func (s *Server) openListeners() error {
	if s.tcp == nil && s.cfg.MQTTAddr != "" {
		ln, err := net.Listen("tcp", s.cfg.MQTTAddr)
		if err != nil {
			return fmt.Errorf("broker: listen mqtt %s: %w", s.cfg.MQTTAddr, err)
		}
		s.tcp = ln
	}
	var tlsConf *tls.Config
	if s.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("broker: load tls key pair: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if s.tls == nil && s.cfg.MQTTSAddr != "" {
			ln, err := net.Listen("tcp", s.cfg.MQTTSAddr)
			if err != nil {
				return fmt.Errorf("broker: listen mqtts %s: %w", s.cfg.MQTTSAddr, err)
			}
			s.tls = ln
		}
		if s.tls != nil {
			s.tls = tls.NewListener(&writeListener{Listener: s.tls, s: s}, tlsConf)
		}
	} else if s.tls != nil {
		_ = s.tls.Close()
		s.tls = nil
	}
	add := func(l listeners.Listener) error {
		if err := s.mochi.AddListener(&reportingListener{Listener: l, s: s}); err != nil {
			return fmt.Errorf("broker: add listener %s: %w", l.ID(), err)
		}
		return nil
	}
	if s.tcp != nil {
		if err := add(listeners.NewNet("tcp", &writeListener{Listener: s.tcp, s: s})); err != nil {
			return err
		}
	}
	if s.tls != nil {
		if err := add(listeners.NewNet("tls", s.tls)); err != nil {
			return err
		}
	}
	if s.cfg.WSAddr != "" {
		ln, err := net.Listen("tcp", s.cfg.WSAddr)
		if err != nil {
			return fmt.Errorf("broker: listen ws %s: %w", s.cfg.WSAddr, err)
		}
		s.ws = newWSListener(&writeListener{Listener: ln, s: s})
		if err := add(listeners.NewNet("ws", s.ws)); err != nil {
			_ = s.ws.Close()
			return err
		}
	}
	return nil
}

// Addr is the TCP listener's address, nil without one or before Start
// (unless Config.MQTTListener was given).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// TLSAddr is the TLS listener's address, nil without TLS.
func (s *Server) TLSAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tls == nil || s.cfg.TLSCert == "" {
		return nil
	}
	return s.tls.Addr()
}

// WSAddr is the WebSocket listener's address, nil without one or before
// Start.
func (s *Server) WSAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ws == nil {
		return nil
	}
	return s.ws.Addr()
}

// Listening reports whether the broker is serving (for /readyz).
func (s *Server) Listening() bool { return s.listening.Load() }

// Close disconnects every client, closes the listeners and waits for the
// connection goroutines. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.listening.Store(false)
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		if !started { // listeners handed to New were never given to mochi
			for _, ln := range []net.Listener{s.cfg.MQTTListener, s.cfg.MQTTSListener} {
				if ln != nil {
					_ = ln.Close()
				}
			}
		}
		if err := s.mochi.Close(); err != nil {
			s.closeErr = fmt.Errorf("broker: close: %w", err)
		}
		s.connectWork.stop()
		s.log.Info().Msg("broker stopped")
	})
	return s.closeErr
}

// Publish publishes a message from the backend, bypassing the ACL. It may
// block, at most about OperatorSlowTimeout, while an operator subscriber's
// queue is full (backpressure); a device's socket never holds it.
func (s *Server) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("broker: publish %s: %w", topic, err)
	}
	if s.closing.Load() {
		return fmt.Errorf("broker: publish %s: %w", topic, ErrClosed)
	}
	if qos > 2 {
		return fmt.Errorf("broker: publish %s: qos %d", topic, qos)
	}
	if topic == "" || !mqtt.IsValidFilter(topic, true) {
		return fmt.Errorf("broker: publish: invalid topic %q", topic)
	}
	if err := s.mochi.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("broker: publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe registers an in-process subscription, bypassing the ACL. h runs
// in the publishing client's goroutine, so it must hand work off quickly.
func (s *Server) Subscribe(filter string, h func(Message)) error {
	if s.closing.Load() {
		return fmt.Errorf("broker: subscribe %s: %w", filter, ErrClosed)
	}
	if h == nil {
		return fmt.Errorf("broker: subscribe %s: nil handler", filter)
	}
	s.mu.Lock()
	s.nextSubID++
	id := s.nextSubID
	s.mu.Unlock()
	err := s.mochi.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		h(Message{Topic: pk.TopicName, Payload: pk.Payload, Username: s.usernameOf(pk.Origin)})
	})
	if err != nil {
		return fmt.Errorf("broker: subscribe %s: %w", filter, err)
	}
	return nil
}

// usernameOf returns the username of the client with ID clientID.
func (s *Server) usernameOf(clientID string) string {
	if clientID == "" || clientID == mqtt.InlineClientId {
		return ""
	}
	if cl, ok := s.mochi.Clients.Get(clientID); ok && !cl.Net.Inline {
		return string(cl.Properties.Username)
	}
	return ""
}

// reject records a rejection: metric, security log line and OnReject.
func (s *Server) reject(r Rejection) {
	s.m.rejections.WithLabelValues(r.Reason).Inc()
	s.log.Warn().Str("event", "security").Str("reason", r.Reason).Str("username", r.Username).
		Str("client_id", r.ClientID).Str("detail", r.Detail).Msg("broker rejected client")
	if s.cfg.OnReject != nil {
		s.cfg.OnReject(r)
	}
}

// isOperator reports whether cl is logged in as an operator.
func (s *Server) isOperator(cl *mqtt.Client) bool {
	id := s.identityOf(cl)
	return id != nil && !id.device
}

func (s *Server) setIdentity(c net.Conn, id *identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idents[c] = id
}

func (s *Server) identityOf(cl *mqtt.Client) *identity {
	if cl.Net.Conn == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idents[cl.Net.Conn]
}

func (s *Server) forget(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.idents, c)
}

// addrOf returns ln's address, or nil.
func addrOf(ln net.Listener) fmt.Stringer {
	if ln == nil {
		return nilAddr{}
	}
	return ln.Addr()
}

type nilAddr struct{}

func (nilAddr) String() string { return "" }
