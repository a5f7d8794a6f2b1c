package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// presenceRig is a Service behind a real embedded broker that devices log
// in to over loopback with paho, as in `ecowatt serve`. Its bus can hold
// wills and its presence hook can hold disconnect reports, to deliver them
// late on purpose (fault injection: a slow replica, a slow goroutine).
type presenceRig struct {
	t    *testing.T
	s    *Service
	srv  *broker.Server
	addr string
	reg  *prometheus.Registry

	holdWills   atomic.Bool
	holdReports atomic.Bool
	mu          sync.Mutex // guards held
	held        []func()   // held wills and disconnect reports
}

func newPresenceRig(t *testing.T) *presenceRig {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	r := &presenceRig{t: t, reg: prometheus.NewRegistry()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	r.srv, err = broker.New(broker.Config{MQTTListener: ln, Devices: rigAuth{r}, Presence: rigPresence{r}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r.s, err = New(Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: rigBus{r},
		Logger: log, Registerer: r.reg, BcryptCost: bcrypt.MinCost, Workers: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, r.s, r.srv, false)
	return r
}

// startRun starts s.Run and then the broker, and returns stop (also run at
// cleanup, once). stop closes the broker and then ends Run, unless
// serviceFirst: then Run ends first, so no sweep sees the connections go.
func startRun(t *testing.T, s *Service, srv *broker.Server, serviceFirst bool) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	end := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if serviceFirst {
				end()
				_ = srv.Close()
				return
			}
			_ = srv.Close()
			end()
		})
	}
	t.Cleanup(stop)
	return stop
}

// rigAuth, rigPresence and rigBus adapt the Service to the broker as
// cmd/ecowatt does.
type rigAuth struct{ r *presenceRig }

func (a rigAuth) DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error) {
	k, err := a.r.s.DeviceKeys(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", broker.ErrUnknownDevice, id)
	}
	return k, err
}

type rigPresence struct{ r *presenceRig }

func (p rigPresence) DeviceConnected(ctx context.Context, id string) (uint64, error) {
	return p.r.s.DeviceConnected(ctx, id)
}

func (p rigPresence) DeviceDisconnected(ctx context.Context, id string, gen uint64, cause string) error {
	if p.r.holdReports.Load() {
		p.r.hold(func() { _ = p.r.s.DeviceDisconnected(context.Background(), id, gen, cause) })
		return nil
	}
	return p.r.s.DeviceDisconnected(ctx, id, gen, cause)
}

type rigBus struct{ r *presenceRig }

func (b rigBus) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	return b.r.srv.Publish(ctx, topic, payload, qos)
}

func (b rigBus) Subscribe(filter string, h func(Message)) error {
	return b.r.srv.Subscribe(filter, func(m broker.Message) {
		if b.r.holdWills.Load() && isWill(m.Payload) {
			b.r.hold(func() { h(Message(m)) })
			return
		}
		h(Message(m))
	})
}

func (r *presenceRig) hold(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = append(r.held, f)
}

// release delivers what was held, in order, and returns how many.
func (r *presenceRig) release() int {
	r.holdWills.Store(false)
	r.holdReports.Store(false)
	r.mu.Lock()
	held := r.held
	r.held = nil
	r.mu.Unlock()
	for _, f := range held {
		f()
	}
	return len(held)
}

// conn is a paho client's connection; mute makes it drop everything the
// client writes (a device whose uplink died without a FIN).
type conn struct {
	net.Conn
	mute atomic.Bool
}

func (c *conn) Write(p []byte) (int, error) {
	if c.mute.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

type device struct {
	id    string
	keys  *envelope.Keys
	nonce uint64
}

func (r *presenceRig) device(id string) *device {
	r.t.Helper()
	psk, err := r.s.Provision(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		r.t.Fatal(err)
	}
	return &device{id: id, keys: &k}
}

// connect logs d in with paho (no auto-reconnect) and returns the client
// and its connection. withWill sets the device's will.
func (r *presenceRig) connect(d *device, withWill bool, keepalive time.Duration) (paho.Client, *conn) {
	r.t.Helper()
	var c *conn
	opts := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(d.id).
		SetUsername(d.id).SetPassword(envelope.Password(d.keys, d.id, time.Now())).
		SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(keepalive).SetPingTimeout(time.Minute).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			nc, err := net.Dial("tcp", u.Host)
			if err != nil {
				return nil, err
			}
			c = &conn{Conn: nc}
			return c, nil
		})
	if withWill {
		opts.SetBinaryWill(topics.DeviceUp(d.id, topics.KindBirth), []byte(`{"online":false}`), 1, false)
	}
	cl := paho.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		r.t.Fatalf("connect %s: %v", d.id, tok.Error())
	}
	r.t.Cleanup(func() { cl.Disconnect(0) })
	return cl, c
}

// birth publishes a signed birth and waits until the device is online
// with that boot count.
func (r *presenceRig) birth(cl paho.Client, d *device, boot int64) {
	r.t.Helper()
	d.nonce++
	topic := topics.DeviceUp(d.id, topics.KindBirth)
	body, _ := json.Marshal(topics.Birth{Online: true, FirmwareVersion: "1.0.0", BootCount: boot})
	raw, err := envelope.Seal(d.keys, topic, d.nonce, time.Now(), body, false, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	if tok := cl.Publish(topic, 1, false, raw); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		r.t.Fatalf("publish birth: %v", tok.Error())
	}
	r.waitPresence(d.id, true, boot, 5*time.Second)
}

// waitPresence waits until dev's record says online == want (and, when
// online, the given boot count).
func (r *presenceRig) waitPresence(dev string, want bool, boot int64, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	var d Device
	for time.Now().Before(deadline) {
		var err error
		if d, err = r.s.Device(context.Background(), dev); err != nil {
			r.t.Fatal(err)
		}
		if d.Online == want && (!want || d.BootCount == boot) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatalf("device %s: online=%t boot=%d after %v, want online=%t boot=%d", dev, d.Online, d.BootCount, timeout, want, boot)
}

// presenceEvents collects dev's presence events from now on.
func (r *presenceRig) presenceEvents(dev string) func() []map[string]any {
	ch, cancel := r.s.SubscribeEvents(EventFilter{Device: dev, Kind: topics.EventPresence})
	r.t.Cleanup(cancel)
	var mu sync.Mutex
	var got []map[string]any
	go func() {
		for ev := range ch {
			var m map[string]any
			_ = json.Unmarshal(ev.Data, &m)
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
		}
	}()
	return func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]any(nil), got...)
	}
}

// TestPresenceEveryDisconnect: a device is marked offline however its
// connection ends, through the real broker and a raw paho client.
func TestPresenceEveryDisconnect(t *testing.T) {
	r := newPresenceRig(t)
	cases := []struct {
		name     string
		will     bool
		keep     time.Duration
		end      func(paho.Client, *conn)
		via      string
		deadline time.Duration
	}{
		{"clean DISCONNECT, no will", false, 30 * time.Second, func(c paho.Client, _ *conn) { c.Disconnect(100) }, "disconnect", 3 * time.Second},
		{"abrupt close with will", true, 30 * time.Second, func(_ paho.Client, c *conn) { _ = c.Conn.Close() }, "closed", 3 * time.Second},
		{"abrupt close, no will", false, 30 * time.Second, func(_ paho.Client, c *conn) { _ = c.Conn.Close() }, "closed", 3 * time.Second},
		// mochi allows 1.5 keepalives of silence.
		{"keepalive timeout", false, time.Second, func(_ paho.Client, c *conn) { c.mute.Store(true) }, "keepalive", 5 * time.Second},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r.t = t
			d := r.device(fmt.Sprintf("pres-%d", i))
			events := r.presenceEvents(d.id)
			cl, c := r.connect(d, tc.will, tc.keep)
			r.birth(cl, d, 1)
			tc.end(cl, c)
			r.waitPresence(d.id, false, 0, tc.deadline)
			dev, err := r.s.Device(context.Background(), d.id)
			if err != nil {
				t.Fatal(err)
			}
			if dev.Online {
				t.Fatalf("device online after %s", tc.name)
			}
			// Exactly one offline event, from the broker's report (a will,
			// when there is one, adds nothing).
			time.Sleep(200 * time.Millisecond)
			var offline []map[string]any
			for _, ev := range events() {
				if ev["online"] == false {
					offline = append(offline, ev)
				}
			}
			if len(offline) != 1 || offline[0]["via"] != tc.via {
				t.Fatalf("offline events %v, want one via %q", offline, tc.via)
			}
		})
	}
}

// TestPresenceTakeover: a second connection with the same client ID takes
// the session over. The old connection's will and its disconnect report
// are both delivered after the new connection's birth, the worst order;
// the device stays online and no offline event follows the new birth.
func TestPresenceTakeover(t *testing.T) {
	r := newPresenceRig(t)
	d := r.device("pres-takeover")
	old, _ := r.connect(d, true, 30*time.Second)
	r.birth(old, d, 1)

	r.holdWills.Store(true)
	r.holdReports.Store(true)
	events := r.presenceEvents(d.id)
	cur, _ := r.connect(d, true, 30*time.Second)
	r.birth(cur, d, 2)
	// The old connection is gone once the broker has reported it or sent
	// its will: wait for both before releasing them.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		n := len(r.held)
		r.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the old connection's will and disconnect report held, want 2", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := r.release(); n != 2 {
		t.Fatalf("released %d late messages, want 2", n)
	}
	// The will goes through the uplink queue: wait until it was counted.
	deadline = time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(r.s.m.uplink.WithLabelValues("will")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the late will was not processed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	dev, err := r.s.Device(context.Background(), d.id)
	if err != nil {
		t.Fatal(err)
	}
	if !dev.Online || dev.BootCount != 2 {
		t.Fatalf("after takeover: online=%t boot=%d, want online with boot 2", dev.Online, dev.BootCount)
	}
	for _, ev := range events() {
		if ev["online"] == false {
			t.Fatalf("offline event after the new birth: %v (all: %v)", ev, events())
		}
	}
	if !cur.IsConnectionOpen() {
		t.Fatal("the new connection was closed")
	}
}

// TestPresenceStaleBirth: a birth still queued when its connection ends
// does not bring the device back online, and a disconnect report of an
// older generation does not take a newer connection offline.
func TestPresenceStaleBirth(t *testing.T) {
	h := newHarness(t)
	k := h.device("stale-1")
	ctx := context.Background()
	gen, err := h.s.DeviceConnected(ctx, "stale-1")
	if err != nil || gen != 1 {
		t.Fatalf("DeviceConnected = %d, %v; want 1", gen, err)
	}
	h.birth(k, "stale-1", 1, `{"online":true,"firmware_version":"1.0.0","boot_count":1,"config_version":0,"uptime_s":0}`)
	if err := h.s.DeviceDisconnected(ctx, "stale-1", gen, "closed"); err != nil {
		t.Fatal(err)
	}
	// A birth of the ended connection, processed late.
	topic := topics.DeviceUp("stale-1", topics.KindBirth)
	h.bus.Deliver(Message{Topic: topic, Payload: h.seal(k, topic, 2, `{"online":true,"firmware_version":"1.0.0","boot_count":2,"config_version":0,"uptime_s":0}`), Username: "stale-1"})
	h.bus.Deliver(Message{Topic: topic, Payload: h.seal(k, topic, 3, `{"online":true,"firmware_version":"1.0.0","boot_count":3,"config_version":0,"uptime_s":0}`), Username: "stale-1"})
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.s.m.uplink.WithLabelValues(topics.KindBirth)) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("late births not processed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the counter moves before the handler runs
	d, err := h.s.Device(ctx, "stale-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Online || d.BootCount != 1 {
		t.Fatalf("after a late birth: online=%t boot=%d, want offline, boot 1", d.Online, d.BootCount)
	}

	// Reconnect (generation 2); then the report of generation 1 again.
	if gen, err = h.s.DeviceConnected(ctx, "stale-1"); err != nil || gen != 2 {
		t.Fatalf("DeviceConnected = %d, %v; want 2", gen, err)
	}
	h.birth(k, "stale-1", 4, `{"online":true,"firmware_version":"1.0.0","boot_count":4,"config_version":0,"uptime_s":0}`)
	if err := h.s.DeviceDisconnected(ctx, "stale-1", 1, "takeover"); err != nil {
		t.Fatal(err)
	}
	if d, _ = h.s.Device(ctx, "stale-1"); !d.Online || d.BootCount != 4 {
		t.Fatalf("after a stale disconnect: online=%t boot=%d, want online, boot 4", d.Online, d.BootCount)
	}
	if _, err := h.s.DeviceConnected(ctx, "nobody"); ErrorCode(err) != CodeNotFound {
		t.Fatalf("DeviceConnected(unknown) = %v, want not found", err)
	}
}
