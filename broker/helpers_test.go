package broker

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// fakeAuth is an in-memory DeviceAuth and OperatorAuth.
type fakeAuth struct {
	devices   map[string]*envelope.Keys
	operators map[string]fakeOperator
}

type fakeOperator struct {
	password string
	role     topics.Role
}

var (
	_ DeviceAuth   = (*fakeAuth)(nil)
	_ OperatorAuth = (*fakeAuth)(nil)
)

func (a *fakeAuth) DeviceKeys(_ context.Context, id string) (*envelope.Keys, error) {
	if k, ok := a.devices[id]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("device %q: %w", id, ErrUnknownDevice)
}

func (a *fakeAuth) AuthenticateOperator(_ context.Context, name, password string) (topics.Role, error) {
	op, ok := a.operators[name]
	if !ok {
		return "", fmt.Errorf("operator %q: %w", name, ErrUnknownOperator)
	}
	if op.password != password {
		return "", fmt.Errorf("operator %q: wrong password", name)
	}
	return op.role, nil
}

// newFakeAuth provisions devices and the operators admin/admin-pw and
// viewer/viewer-pw.
func newFakeAuth(t testing.TB, devices ...string) *fakeAuth {
	t.Helper()
	a := &fakeAuth{devices: map[string]*envelope.Keys{}, operators: map[string]fakeOperator{
		"admin":  {"admin-pw", topics.RoleAdmin},
		"viewer": {"viewer-pw", topics.RoleViewer},
	}}
	for _, id := range devices {
		psk := sha256.Sum256([]byte("psk " + id))
		k, err := envelope.DeriveKeys(psk[:])
		if err != nil {
			t.Fatal(err)
		}
		a.devices[id] = &k
	}
	return a
}

// token is a fresh password token for device id.
func (a *fakeAuth) token(id string) string { return envelope.Password(a.devices[id], id, time.Now()) }

// testBroker is a started Server plus what tests inspect.
type testBroker struct {
	*Server
	auth *fakeAuth
	reg  *prometheus.Registry

	mu      sync.Mutex // guards rejects
	rejects []Rejection
}

func startBroker(t testing.TB, mod func(*Config), devices ...string) *testBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBroker{auth: newFakeAuth(t, devices...), reg: prometheus.NewRegistry()}
	cfg := Config{
		MQTTListener: ln,
		Devices:      tb.auth,
		Operators:    tb.auth,
		Logger:       zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Registerer:   tb.reg,
		OnReject: func(r Rejection) {
			tb.mu.Lock()
			defer tb.mu.Unlock()
			tb.rejects = append(tb.rejects, r)
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tb.Server = s
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return tb
}

// rejected returns the rejections recorded so far.
func (tb *testBroker) rejected() []Rejection {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]Rejection(nil), tb.rejects...)
}

// expectReject waits until a rejection with reason has been recorded, and
// checks it was counted in ecowatt_broker_rejections_total.
func (tb *testBroker) expectReject(t testing.TB, reason, detail string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range tb.rejected() {
			if r.Reason == reason && strings.Contains(r.Detail, detail) {
				if n := testutil.ToFloat64(tb.m.rejections.WithLabelValues(reason)); n < 1 {
					t.Errorf("rejection %q recorded but metric is %v", reason, n)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rejection %q (detail %q); got %+v", reason, detail, tb.rejected())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// inbox collects in-process deliveries.
type inbox struct {
	mu   sync.Mutex // guards msgs
	msgs []Message
}

func (tb *testBroker) inbox(t testing.TB, filter string) *inbox {
	t.Helper()
	in := &inbox{}
	if err := tb.Subscribe(filter, func(m Message) {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.msgs = append(in.msgs, m)
	}); err != nil {
		t.Fatal(err)
	}
	return in
}

func (in *inbox) all() []Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]Message(nil), in.msgs...)
}

// wait waits for a message on topic.
func (in *inbox) wait(t testing.TB, topic string) Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range in.all() {
			if m.Topic == topic {
				return m
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no message on %s; got %d others", topic, len(in.all()))
	return Message{}
}

// clientOpts are paho options for user on tb, with auto-reconnect off.
func (tb *testBroker) clientOpts(clientID, user, password string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker("tcp://" + tb.Addr().String()).
		SetClientID(clientID).SetUsername(user).SetPassword(password).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetWriteTimeout(5 * time.Second).
		SetProtocolVersion(4)
}

// connect connects a paho client and returns it with its connect error.
func connect(t testing.TB, opts *paho.ClientOptions) (paho.Client, error) {
	t.Helper()
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return c, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// mustConnect connects or fails the test.
func mustConnect(t testing.TB, opts *paho.ClientOptions) paho.Client {
	t.Helper()
	c, err := connect(t, opts)
	if err != nil {
		t.Fatalf("connect %s: %v", opts.ClientID, err)
	}
	return c
}

// device connects device id with a fresh token.
func (tb *testBroker) device(t testing.TB, id string) paho.Client {
	t.Helper()
	return mustConnect(t, tb.clientOpts(id, id, tb.auth.token(id)))
}

func waitToken(t testing.TB, tok paho.Token) error {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("token timed out")
	}
	return tok.Error()
}

// subscribeCode subscribes c to filter and returns the SUBACK return code.
func subscribeCode(t testing.TB, c paho.Client, filter string, h paho.MessageHandler) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, h)
	if err := waitToken(t, tok); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	key := filter
	if strings.HasPrefix(key, "$share/") { // paho keys results without the share prefix
		key = strings.Join(strings.Split(key, "/")[2:], "/")
	}
	code, ok := tok.(*paho.SubscribeToken).Result()[key]
	if !ok {
		t.Fatalf("subscribe %s: no result", filter)
	}
	return code
}

// settleGoroutines waits until at most n goroutines run.
func settleGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
