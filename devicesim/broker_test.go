package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// testBroker is a bare mochi broker (allow-all) with an inline subscriber
// that records every uplink.
type testBroker struct {
	t    *testing.T
	srv  *mochi.Server
	addr string // host:port

	closeOnce sync.Once

	mu   sync.Mutex // guards msgs
	msgs []uplink
}

// close stops the broker (mochi's Close panics when called twice).
func (b *testBroker) close() { b.closeOnce.Do(func() { _ = b.srv.Close() }) }

type uplink struct {
	topic   string
	payload []byte
}

// allowAll lets every client connect and use every topic, like mochi's
// auth.AllowHook (which would pull yaml into go.sum for tests alone).
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// startBroker starts a broker on addr ("127.0.0.1:0" for a fresh port).
func startBroker(t *testing.T, addr string) *testBroker {
	t.Helper()
	srv := mochi.New(&mochi.Options{
		InlineClient: true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	var err error
	for range 50 { // the old listener's port may take a moment to free
		if err = srv.AddListener(l); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	b := &testBroker{t: t, srv: srv, addr: l.Address()}
	// Record before serving: a device reconnecting to a restarted broker
	// publishes its birth at once, and a late subscription would miss it.
	err = srv.Subscribe(topics.FilterAllUp, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		b.mu.Lock()
		b.msgs = append(b.msgs, uplink{pk.TopicName, bytes.Clone(pk.Payload)})
		b.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	return b
}

func (b *testBroker) url() string { return "tcp://" + b.addr }

// kick drops the device's connection from the broker side.
func (b *testBroker) kick(id string) {
	cl, ok := b.srv.Clients.Get(id)
	if !ok {
		b.t.Fatalf("kick: no client %s", id)
	}
	cl.Stop(errors.New("kicked by test"))
}

// publish injects a downlink, bypassing ACLs.
func (b *testBroker) publish(topic string, payload []byte) {
	if err := b.srv.Publish(topic, payload, false, 1); err != nil {
		b.t.Fatal(err)
	}
}

// birth is one received birth message: signed, or a plain will.
type birth struct {
	topics.Birth
	Nonce  uint64
	Signed bool
}

// births returns the births of device id so far, verifying each signed one.
func (b *testBroker) births(id string, keys *envelope.Keys) []birth {
	b.t.Helper()
	b.mu.Lock()
	msgs := append([]uplink(nil), b.msgs...)
	b.mu.Unlock()
	var out []birth
	for _, m := range msgs {
		if m.topic != topics.DeviceUp(id, topics.KindBirth) {
			continue
		}
		msg, err := envelope.Open(keys, m.topic, m.payload)
		if err != nil {
			var w topics.Will
			if json.Unmarshal(m.payload, &w) != nil {
				b.t.Fatalf("birth neither signed nor a will: %v: %s", err, m.payload)
			}
			out = append(out, birth{Birth: topics.Birth{Online: w.Online}})
			continue
		}
		var bb topics.Birth
		if err := json.Unmarshal(msg.Body, &bb); err != nil {
			b.t.Fatalf("birth body: %v", err)
		}
		out = append(out, birth{Birth: bb, Nonce: msg.Nonce, Signed: true})
	}
	return out
}

// nonces returns the nonces of every signed uplink of device id, in order.
func (b *testBroker) nonces(id string, keys *envelope.Keys) []uint64 {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []uint64
	for _, m := range b.msgs {
		if !strings.HasPrefix(m.topic, topics.DeviceUpPrefix(id)) {
			continue
		}
		if msg, err := envelope.Open(keys, m.topic, m.payload); err == nil {
			out = append(out, msg.Nonce)
		}
	}
	return out
}

// signedBirths returns only the signed online births.
func (b *testBroker) signedBirths(id string, keys *envelope.Keys) []birth {
	var out []birth
	for _, x := range b.births(id, keys) {
		if x.Signed && x.Online {
			out = append(out, x)
		}
	}
	return out
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ours matches stack frames of the runtime under test (not of the tests).
var ours = regexp.MustCompile(`eclipse/paho\.mqtt\.golang|/devicesim/(device|conn|fleet|records|config|command|features|fota|fota_download|fota_boot)\.go`)

// checkNoLeak fails if any paho or devicesim goroutine outlives the test.
func checkNoLeak(t *testing.T) {
	t.Helper()
	var leaked []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if ours.MatchString(g) && !strings.Contains(g, "checkNoLeak") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines leaked, first:\n%s", len(leaked), leaked[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testKey returns a deterministic 32-byte PSK.
func testKey(seed byte) []byte {
	k := make([]byte, envelope.KeySize)
	for i := range k {
		k[i] = seed + byte(i)
	}
	return k
}

func mustKeys(t *testing.T, psk []byte) *envelope.Keys {
	t.Helper()
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	return &k
}

// testLogger writes through t.Log.
func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: tWriter{t}, NoColor: true}).Level(zerolog.DebugLevel)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// running is a device started in the background.
type running struct {
	d      *Device
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, d *Device) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the device and checks that Run returns promptly and cleanly.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.done == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return within 3 s of cancel")
	}
	r.done = nil
}
