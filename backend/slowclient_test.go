package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// slowRig is one Service with a single uplink worker (every device on one
// shard) behind a real embedded broker on loopback, as in `ecowatt serve`.
type slowRig struct {
	t       *testing.T
	s       *Service
	srv     *broker.Server
	addr    string
	brokReg *prometheus.Registry
}

type slowRigAuth struct{ s **Service }

func (a slowRigAuth) DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error) {
	k, err := (*a.s).DeviceKeys(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", broker.ErrUnknownDevice, id)
	}
	return k, err
}

type slowRigPresence struct{ s **Service }

func (p slowRigPresence) DeviceConnected(ctx context.Context, id string) (uint64, error) {
	return (*p.s).DeviceConnected(ctx, id)
}

func (p slowRigPresence) DeviceDisconnected(ctx context.Context, id string, gen uint64, cause string) error {
	return (*p.s).DeviceDisconnected(ctx, id, gen, cause)
}

func newSlowRig(t *testing.T) *slowRig {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	r := &slowRig{t: t, brokReg: prometheus.NewRegistry()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	// Default broker limits: SlowClientTimeout is 2 s, above the bound
	// the test asserts for the other devices.
	r.srv, err = broker.New(broker.Config{MQTTListener: ln, Devices: slowRigAuth{&r.s},
		Presence: slowRigPresence{&r.s}, Logger: log, Registerer: r.brokReg})
	if err != nil {
		t.Fatal(err)
	}
	r.s, err = New(Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: r.srv,
		Logger: log, Registerer: prometheus.NewRegistry(), BcryptCost: bcrypt.MinCost, Workers: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, r.s, r.srv, false)
	return r
}

func (r *slowRig) provision(id string) *envelope.Keys {
	r.t.Helper()
	psk, err := r.s.Provision(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		r.t.Fatal(err)
	}
	return &k
}

// metric returns the value of the broker's counter name summed over its
// labels, or -1 when it is not registered.
func (r *slowRig) metric(name string) float64 {
	r.t.Helper()
	mfs, err := r.brokReg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum
	}
	return -1
}

// stuckDevice is a raw MQTT client that subscribes to its downlinks and
// then never reads its socket again (receive buffer shrunk to the
// minimum), while it keeps sending fota_request uplinks: the rogue case of
// issue 18.
type stuckDevice struct {
	conn  net.Conn
	keys  *envelope.Keys
	id    string
	nonce uint64
}

func (r *slowRig) stuck(id string, keys *envelope.Keys) *stuckDevice {
	r.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	sd := &stuckDevice{conn: conn, keys: keys, id: id}
	sd.write(r.t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(envelope.Password(keys, id, time.Now()))}})
	sd.write(r.t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: topics.DeviceDownFilter(id), Qos: 1}}})
	// Read the CONNACK and the SUBACK (5 bytes each with 3.1.1), then never again.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 9)
	if _, err := ioReadFull(conn, ack); err != nil {
		r.t.Fatalf("stuck device: connack/suback: %v", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 || ack[8] != 1 {
		r.t.Fatalf("stuck device: connack/suback % x", ack)
	}
	return sd
}

func ioReadFull(c net.Conn, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := c.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (sd *stuckDevice) write(t *testing.T, pk packets.Packet) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		t.Error(err)
		return
	}
	_ = sd.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = sd.conn.Write(buf.Bytes()) // fails once the broker cut it off
}

// request sends one fota_request uplink at QoS 0 (no PUBACK to read).
func (sd *stuckDevice) request(t *testing.T) {
	sd.nonce++
	topic := topics.DeviceUp(sd.id, topics.KindFOTARequest)
	env, err := envelope.Seal(sd.keys, topic, sd.nonce, time.Now(), []byte(`{"version":"1.0.0","from":0,"count":8}`), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	sd.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: topic, Payload: env})
}

// TestNonReadingDeviceDoesNotSlowItsShard is issue 18, reliability 6: a
// device that stops reading its socket while it floods fota_request (each
// answered, in the shard's worker, with 8 × 16 KiB chunks) must not delay
// the other devices of its worker shard, and is disconnected as a slow
// client instead of holding the broker's resources.
func TestNonReadingDeviceDoesNotSlowItsShard(t *testing.T) {
	r := newSlowRig(t)
	chunk := bytes.Repeat([]byte{0xa5}, 16<<10)
	r.s.Handle(topics.KindFOTARequest, func(ctx context.Context, dev string, _ envelope.Message) error {
		// As fota.HandleRequest: the chunks are published from the worker.
		return r.s.SendBinary(ctx, dev, topics.KindFOTAChunk, chunk, chunk, chunk, chunk, chunk, chunk, chunk, chunk)
	})
	var (
		mu       sync.Mutex // guards slowest, handled
		slowest  time.Duration
		handled  int
		received = map[string]int{}
	)
	r.s.Handle(topics.KindTelemetry, func(_ context.Context, dev string, m envelope.Message) error {
		var body struct {
			Sent int64 `json:"sent"`
		}
		if err := json.Unmarshal(m.Body, &body); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		slowest = max(slowest, time.Since(time.Unix(0, body.Sent)))
		handled++
		received[dev]++
		return nil
	})

	stuck := r.stuck("rogue", r.provision("rogue"))

	const normals = 2
	clients := make([]paho.Client, normals)
	keys := make([]*envelope.Keys, normals)
	for i := range normals {
		id := fmt.Sprintf("dev%d", i)
		keys[i] = r.provision(id)
		opts := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(id).SetUsername(id).
			SetPassword(envelope.Password(keys[i], id, time.Now())).SetAutoReconnect(false).SetConnectRetry(false)
		clients[i] = paho.NewClient(opts)
		if tok := clients[i].Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		defer clients[i].Disconnect(0)
		if tok := clients[i].Subscribe(topics.DeviceDownFilter(id), 1, func(paho.Client, paho.Message) {}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", id, tok.Error())
		}
	}

	// Flood for a fixed 5 s (more than twice SlowClientTimeout) while the
	// normal devices send telemetry every 50 ms.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			stuck.request(t)
			time.Sleep(10 * time.Millisecond)
		}
	})
	sent := 0
	for i := range normals {
		id := fmt.Sprintf("dev%d", i)
		cl, k := clients[i], keys[i]
		wg.Go(func() {
			topic := topics.DeviceUp(id, topics.KindTelemetry)
			for nonce := uint64(1); ctx.Err() == nil; nonce++ {
				env, err := envelope.Seal(k, topic, nonce, time.Now(), fmt.Appendf(nil, `{"sent":%d}`, time.Now().UnixNano()), false, nil)
				if err != nil {
					t.Error(err)
					return
				}
				if tok := cl.Publish(topic, 1, false, env); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Errorf("publish %s: %v", id, tok.Error())
					return
				}
				mu.Lock()
				sent++
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()

	// Every telemetry uplink reaches its handler.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n, total := handled, sent
		mu.Unlock()
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d telemetry uplinks handled", n, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	t.Logf("telemetry: %d handled (%v), slowest uplink→handler %v", handled, received, slowest)
	if slowest > 500*time.Millisecond {
		t.Errorf("a normal device's uplink waited %v for its handler while another device on its shard stopped reading; want < 500ms", slowest)
	}
	mu.Unlock()

	if n := r.metric("ecowatt_slow_clients_disconnected_total"); n < 1 {
		t.Errorf("ecowatt_slow_clients_disconnected_total = %v, want ≥ 1", n)
	}
	if g := r.srv.HeldGeneration("rogue"); g != 0 {
		t.Errorf("the non-reading device is still connected (generation %d)", g)
	}
	for i := range normals {
		if !clients[i].IsConnectionOpen() {
			t.Errorf("normal device dev%d was disconnected", i)
		}
	}
}
