// Package mqttbus is the backend's Bus over an external MQTT broker (EMQX,
// HiveMQ, VerneMQ, Mosquitto), for running several backend replicas behind
// one clustered broker.
//
// The client reconnects on its own and subscribes again after every
// connection (sessions are clean: a dead replica leaves no queue behind;
// every protocol recovers a lost message by timeout and retry). Device
// uplinks and operator topics are subscribed through a shared subscription
// ($share/<group>/<filter>), so the broker hands each message to one
// replica and the replicas split the load. Handlers run one at a time in
// the client's delivery goroutine, in arrival order, and the message is
// acknowledged when the handler returns: handlers hand work off at once
// (backend.Service queues it), and a full queue slows the broker down
// instead of losing messages.
//
// The external broker does not tell a subscriber who published, so
// Message.Username is always empty; the broker's own ACL (see
// broker/authhttp) is what binds a device to its topics.
package mqttbus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
)

// Config configures a Bus. URL and ClientID are required.
type Config struct {
	URL                string // tcp://, mqtt://, ssl://, tls://, mqtts://, ws://, wss://
	Username, Password string
	CAFile             string // PEM CA bundle to verify the broker; default: system roots
	ClientID           string // unique per replica, e.g. "ecowatt-" + replica ID
	Group              string // shared subscription group; default DefaultGroup
	// Shared reports whether a filter is subscribed through the shared
	// group; default: device and operator filters (ecowatt/v1/dev/...,
	// ecowatt/v1/ops/...). Other filters reach every replica.
	Shared func(filter string) bool

	ConnectTimeout   time.Duration // first connection; default 30 s
	OperationTimeout time.Duration // a publish or subscribe without a ctx deadline; default 10 s
	KeepAlive        time.Duration // default 30 s
	// MaxReconnectInterval caps paho's doubling reconnect delay; default 10 s.
	MaxReconnectInterval time.Duration
	// HandshakeTimeout bounds one connection attempt, TCP to CONNACK; an
	// attempt that hangs (a broker accepting but not answering while it
	// restarts) is abandoned and retried. Default 10 s.
	HandshakeTimeout time.Duration
	Logger           zerolog.Logger
}

// DefaultGroup is the shared subscription group of all replicas.
const DefaultGroup = "ecowatt"

// ErrClosed is returned after Close.
var ErrClosed = errors.New("mqttbus closed")

// Bus is a backend.Bus on an external broker.
type Bus struct {
	cfg    Config
	log    zerolog.Logger
	client paho.Client

	kick   chan struct{} // a connection was made: subscribe again
	stop   chan struct{} // closed by Close
	done   chan struct{} // closed when the resubscriber has exited
	closed sync.Once

	mu   sync.Mutex // guards subs
	subs []sub
}

var _ backend.Bus = (*Bus)(nil)

type sub struct {
	filter string // as subscribed, $share prefix included
	h      paho.MessageHandler
}

// Dial connects to the broker and returns once connected, or fails after
// Config.ConnectTimeout or when ctx ends. Close the Bus when done.
func Dial(ctx context.Context, cfg Config) (*Bus, error) {
	if cfg.URL == "" || cfg.ClientID == "" {
		return nil, errors.New("mqttbus: URL and ClientID are required")
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if strings.ContainsAny(cfg.Group, "/+#") {
		return nil, fmt.Errorf("mqttbus: group %q must be one topic level", cfg.Group)
	}
	if cfg.Shared == nil {
		cfg.Shared = DefaultShared
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.OperationTimeout <= 0 {
		cfg.OperationTimeout = 10 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	b := &Bus{
		cfg:  cfg,
		log:  cfg.Logger.With().Str("component", "mqttbus").Str("client_id", cfg.ClientID).Logger(),
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if cfg.MaxReconnectInterval <= 0 {
		cfg.MaxReconnectInterval = 10 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	opts := paho.NewClientOptions().
		AddBroker(cfg.URL).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.HandshakeTimeout).
		SetWriteTimeout(cfg.OperationTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetOnConnectHandler(func(paho.Client) {
			b.log.Info().Str("broker", cfg.URL).Msg("connected to external broker")
			select {
			case b.kick <- struct{}{}:
			default:
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			b.log.Warn().Err(err).Msg("external broker connection lost; reconnecting")
		})
	if cfg.CAFile != "" || isTLS(cfg.URL) {
		tc, err := tlsConfig(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		opts.SetTLSConfig(tc)
	}
	b.client = paho.NewClient(opts)
	go b.resubscriber()

	tok := b.client.Connect()
	timer := time.NewTimer(cfg.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			b.Close()
			return nil, fmt.Errorf("mqttbus: connect %s: %w", cfg.URL, err)
		}
	case <-timer.C:
		b.Close()
		return nil, fmt.Errorf("mqttbus: connect %s: no connection after %s", cfg.URL, cfg.ConnectTimeout)
	case <-ctx.Done():
		b.Close()
		return nil, fmt.Errorf("mqttbus: connect %s: %w", cfg.URL, ctx.Err())
	}
	return b, nil
}

// DefaultShared shares device and operator filters.
func DefaultShared(filter string) bool {
	return strings.HasPrefix(filter, topics.Root+"/"+topics.ClassDevice+"/") ||
		strings.HasPrefix(filter, topics.Root+"/"+topics.ClassOps+"/")
}

func isTLS(url string) bool {
	for _, p := range []string{"ssl://", "tls://", "mqtts://", "tcps://", "wss://"} {
		if strings.HasPrefix(url, p) {
			return true
		}
	}
	return false
}

func tlsConfig(caFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("mqttbus: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("mqttbus: %s holds no PEM certificate", caFile)
	}
	tc.RootCAs = pool
	return tc, nil
}

// Connected reports whether the connection is up (for /readyz).
func (b *Bus) Connected() bool { return b.client.IsConnectionOpen() }

// Publish sends payload to topic at qos and waits for the broker's
// acknowledgement (QoS 1 and 2), for ctx's deadline or the operation
// timeout. While reconnecting, a QoS 1 or 2 message waits for the
// connection.
func (b *Bus) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	if qos > 2 {
		return fmt.Errorf("mqttbus: publish %s: qos %d", topic, qos)
	}
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return fmt.Errorf("mqttbus: publish: invalid topic %q", topic)
	}
	select {
	case <-b.stop:
		return fmt.Errorf("mqttbus: publish %s: %w", topic, ErrClosed)
	default:
	}
	if err := b.wait(ctx, b.client.Publish(topic, qos, false, payload)); err != nil {
		return fmt.Errorf("mqttbus: publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe calls h for every message matching filter, through the shared
// group when Config.Shared says so. It subscribes at once when connected
// and again after every reconnection.
func (b *Bus) Subscribe(filter string, h func(backend.Message)) error {
	if h == nil {
		return fmt.Errorf("mqttbus: subscribe %s: nil handler", filter)
	}
	select {
	case <-b.stop:
		return fmt.Errorf("mqttbus: subscribe %s: %w", filter, ErrClosed)
	default:
	}
	f := filter
	if b.cfg.Shared(filter) {
		f = "$share/" + b.cfg.Group + "/" + filter
	}
	s := sub{filter: f, h: func(_ paho.Client, m paho.Message) {
		h(backend.Message{Topic: m.Topic(), Payload: m.Payload()})
	}}
	b.mu.Lock()
	b.subs = append(b.subs, s)
	b.mu.Unlock()
	if !b.client.IsConnectionOpen() {
		return nil // the next connection subscribes it
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.OperationTimeout)
	defer cancel()
	return b.subscribe(ctx, s)
}

func (b *Bus) subscribe(ctx context.Context, s sub) error {
	tok := b.client.Subscribe(s.filter, 1, s.h)
	if err := b.wait(ctx, tok); err != nil {
		return fmt.Errorf("mqttbus: subscribe %s: %w", s.filter, err)
	}
	for f, code := range tok.(*paho.SubscribeToken).Result() {
		if code == 0x80 {
			return fmt.Errorf("mqttbus: subscribe %s: refused by the broker", f)
		}
	}
	b.log.Debug().Str("filter", s.filter).Msg("subscribed")
	return nil
}

// resubscriber subscribes every filter again after each connection (the
// session is clean, so the broker forgot them).
func (b *Bus) resubscriber() {
	defer close(b.done)
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		}
		b.mu.Lock()
		subs := append([]sub(nil), b.subs...)
		b.mu.Unlock()
		for _, s := range subs {
			ctx, cancel := context.WithTimeout(context.Background(), b.cfg.OperationTimeout)
			err := b.subscribe(ctx, s)
			cancel()
			if err != nil {
				b.log.Error().Err(err).Msg("resubscribe after reconnect")
			}
		}
	}
}

// wait waits for tok, for ctx or, without a ctx deadline, the operation
// timeout; or until Close.
func (b *Bus) wait(ctx context.Context, tok paho.Token) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.cfg.OperationTimeout)
		defer cancel()
	}
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stop:
		return ErrClosed
	}
}

// Close disconnects (waiting briefly for in-flight work) and stops the
// resubscriber. It is safe to call more than once.
func (b *Bus) Close() error {
	b.closed.Do(func() {
		close(b.stop)
		// paho's Disconnect can wait on a connection attempt in progress
		// (up to the handshake timeout); shutdown must not. After 2 s the
		// disconnect is left to finish on its own.
		disconnected := make(chan struct{})
		go func() {
			defer close(disconnected)
			b.client.Disconnect(250)
		}()
		select {
		case <-disconnected:
		case <-time.After(2 * time.Second):
			b.log.Warn().Msg("mqtt disconnect still running after 2 s; not waiting for it")
		}
		<-b.done
	})
	return nil
}
