package devicesim

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/fota"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// fotaKey is the test firmware-signing key; otherKey signs forgeries.
func fotaKey(seed byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes32(seed))
	return priv.Public().(ed25519.PublicKey), priv
}

func bytes32(seed byte) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = seed ^ byte(i*7)
	}
	return b
}

// testImage builds a test image and its signed manifest.
func testImage(t *testing.T, version string, size, chunk int, failBoot bool, priv ed25519.PrivateKey) ([]byte, fota.Manifest) {
	t.Helper()
	img, err := fota.BuildTestImage(version, size, failBoot, int64(size)+int64(len(version)))
	if err != nil {
		t.Fatal(err)
	}
	man, err := fota.BuildManifest(img, version, chunk, priv)
	if err != nil {
		t.Fatal(err)
	}
	return img, man
}

// rawManifest signs a manifest for any bytes, without the checks of
// BuildManifest (a backend bug or an attacker with the key would).
func rawManifest(t *testing.T, img []byte, version string, chunk int, priv ed25519.PrivateKey) fota.Manifest {
	t.Helper()
	sum := sha256.Sum256(img)
	m := fota.Manifest{Version: version, Size: int64(len(img)), Hash: hex.EncodeToString(sum[:]), ChunkSize: chunk}
	for off := 0; off < len(img); off += chunk {
		c := sha256.Sum256(img[off:min(off+chunk, len(img))])
		m.Chunks = append(m.Chunks, hex.EncodeToString(c[:]))
	}
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	return m
}

// fotaBackend is a tiny FOTA backend for tests: it answers every
// fota_request with exactly the chunks named, each in a binary envelope,
// and counts what it sends. Hooks tamper with chunks in transit.
type fotaBackend struct {
	t    *testing.T
	b    *testBroker
	id   string
	keys *envelope.Keys
	reqs chan fota.Request
	wg   sync.WaitGroup
	stop context.CancelFunc

	mu     sync.Mutex // guards the fields below
	nonce  uint64
	images map[string]fotaImage
	sent   map[string]map[int]int // version -> index -> times sent
	maxReq int                    // most indices named by one request
	// onChunk may change a chunk before it is sealed (n: times this index
	// was sent before); false drops it.
	onChunk func(idx, n int, c *fota.Chunk) bool
	// onFrame may change the sealed frame.
	onFrame func(idx, n int, frame []byte) []byte
}

type fotaImage struct {
	img   []byte
	chunk int
}

func newFOTABackend(t *testing.T, b *testBroker, id string, keys *envelope.Keys) *fotaBackend {
	ctx, cancel := context.WithCancel(context.Background())
	fb := &fotaBackend{t: t, b: b, id: id, keys: keys, reqs: make(chan fota.Request, 256), stop: cancel,
		images: map[string]fotaImage{}, sent: map[string]map[int]int{}}
	topic := topics.DeviceUp(id, topics.KindFOTARequest)
	err := b.srv.Subscribe(topic, 2, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		msg, err := envelope.Open(keys, pk.TopicName, pk.Payload)
		if err != nil {
			t.Errorf("fota_request envelope: %v", err)
			return
		}
		r, err := fota.ParseRequest(msg.Body)
		if err != nil {
			t.Errorf("fota_request: %v", err)
			return
		}
		fb.reqs <- r
	})
	if err != nil {
		t.Fatal(err)
	}
	fb.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-fb.reqs:
				fb.serve(r)
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		fb.wg.Wait()
	})
	return fb
}

// add makes an image available for download.
func (fb *fotaBackend) add(version string, img []byte, chunk int) {
	fb.mu.Lock()
	fb.images[version] = fotaImage{img, chunk}
	fb.mu.Unlock()
}

func (fb *fotaBackend) serve(r fota.Request) {
	fb.mu.Lock()
	im, ok := fb.images[r.Version]
	fb.maxReq = max(fb.maxReq, len(r.Chunks))
	onChunk, onFrame := fb.onChunk, fb.onFrame
	fb.mu.Unlock()
	if !ok {
		fb.t.Errorf("request for unknown version %s", r.Version)
		return
	}
	for _, i := range r.Chunks {
		off := i * im.chunk
		if off >= len(im.img) {
			fb.t.Errorf("request for chunk %d beyond the image", i)
			continue
		}
		c := fota.Chunk{Version: r.Version, Index: i, Data: slices.Clone(im.img[off:min(off+im.chunk, len(im.img))])}
		fb.mu.Lock()
		if fb.sent[r.Version] == nil {
			fb.sent[r.Version] = map[int]int{}
		}
		n := fb.sent[r.Version][i]
		fb.sent[r.Version][i]++
		fb.mu.Unlock()
		if onChunk != nil && !onChunk(i, n, &c) {
			continue
		}
		payload, err := fota.EncodeChunk(c)
		if err != nil {
			fb.t.Errorf("encode chunk: %v", err)
			return
		}
		frame := fb.seal(topics.KindFOTAChunk, payload, true)
		if onFrame != nil {
			frame = onFrame(i, n, frame)
		}
		fb.publish(topics.KindFOTAChunk, frame)
	}
}

// seal seals a downlink with the next nonce.
func (fb *fotaBackend) seal(kind string, body []byte, binary bool) []byte {
	fb.mu.Lock()
	fb.nonce++
	n := fb.nonce
	fb.mu.Unlock()
	topic := topics.DeviceDown(fb.id, kind)
	var raw []byte
	var err error
	if binary {
		raw, err = envelope.SealBinary(fb.keys, topic, n, time.Now(), body)
	} else {
		raw, err = envelope.Seal(fb.keys, topic, n, time.Now(), body, false, nil)
	}
	if err != nil {
		fb.t.Errorf("seal %s: %v", kind, err)
	}
	return raw
}

func (fb *fotaBackend) publish(kind string, frame []byte) {
	if err := fb.b.srv.Publish(topics.DeviceDown(fb.id, kind), frame, false, 1); err != nil {
		fb.t.Errorf("publish %s: %v", kind, err)
	}
}

// send seals and publishes a JSON downlink (manifest, rollback).
func (fb *fotaBackend) send(kind string, body any) {
	raw, ok := body.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			fb.t.Fatal(err)
		}
	}
	fb.publish(kind, fb.seal(kind, raw, false))
}

func (fb *fotaBackend) sendManifest(m fota.Manifest) {
	fb.send(topics.KindFOTAManifest, fota.ManifestBody{FotaManifest: &m})
}

// sentCounts returns how many chunks of version were sent in all, and how
// many distinct indices.
func (fb *fotaBackend) sentCounts(version string) (total, distinct int) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	for _, n := range fb.sent[version] {
		total += n
		distinct++
	}
	return total, distinct
}

func (fb *fotaBackend) sentIndex(version string, i int) int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return fb.sent[version][i]
}

func (fb *fotaBackend) setHooks(onChunk func(int, int, *fota.Chunk) bool, onFrame func(int, int, []byte) []byte) {
	fb.mu.Lock()
	fb.onChunk, fb.onFrame = onChunk, onFrame
	fb.mu.Unlock()
}

// fotaRig is one device with FOTA on a fake clock, a real broker and a
// test backend. Boots on the same state directory are power cycles.
type fotaRig struct {
	t    *testing.T
	b    *testBroker
	be   *fotaBackend
	id   string
	psk  []byte
	keys *envelope.Keys
	dir  string
	clk  *clock.Fake
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	opt  FOTAOptions

	d *Device
	m *FOTAManager
	r *running
}

func newFOTARig(t *testing.T, id string, seed byte) *fotaRig {
	psk := testKey(seed)
	pub, priv := fotaKey(seed)
	g := &fotaRig{t: t, b: startBroker(t, "127.0.0.1:0"), id: id, psk: psk, keys: mustKeys(t, psk),
		dir: t.TempDir(), clk: clock.NewFake(featureT0), pub: pub, priv: priv,
		opt: FOTAOptions{PublicKey: pub, FailBootDelay: time.Second}}
	g.be = newFOTABackend(t, g.b, id, g.keys)
	return g
}

// boot powers the device on (fl: a pre-opened flash, or nil) and waits
// for its birth.
func (g *fotaRig) boot(fl *flash.Store) {
	t := g.t
	t.Helper()
	births := len(g.b.signedBirths(g.id, g.keys))
	d, err := New(Config{
		ID: g.id, Key: g.psk, Broker: g.b.url(), StateDir: g.dir, Flash: fl, Clock: g.clk,
		Log: testLogger(t), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second, PublishTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := AttachFOTA(d, g.opt)
	if err != nil {
		t.Fatal(err)
	}
	g.d, g.m, g.r = d, m, start(t, d)
	g.waitFor("birth", func() bool { return len(g.b.signedBirths(g.id, g.keys)) > births })
}

// waitFor polls cond for up to 30 s of real time.
func (g *fotaRig) waitFor(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("timed out waiting for %s; fota stats %+v", what, g.m.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// advanceUntil moves the fake clock by step every few milliseconds until
// cond holds.
func (g *fotaRig) advanceUntil(what string, step time.Duration, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("timed out waiting for %s; fota stats %+v", what, g.m.Stats())
		}
		g.clk.Advance(step)
		time.Sleep(10 * time.Millisecond)
	}
}

// expireChunk lets exactly one request time out: it waits until chunk i
// is the only chunk in flight and every other chunk is held (nothing else
// can happen on its own), then moves the fake clock once, to chunk i's
// deadline. The device asks for i again with a longer timeout that the
// clock never reaches, so however slowly the resend lands under load it
// is not timed out twice.
func (g *fotaRig) expireChunk(i int) {
	g.t.Helper()
	var at time.Time
	g.waitFor(fmt.Sprintf("chunk %d the only one missing", i), func() bool {
		g.m.mu.Lock()
		defer g.m.mu.Unlock()
		f, ok := g.m.inflight[i]
		at = f.deadline
		return ok && len(g.m.inflight) == 1 && g.m.bits != nil &&
			!g.m.bits.Has(i) && g.m.bits.Count() == g.m.bits.Len()-1
	})
	g.clk.Advance(at.Sub(g.clk.Now()))
}

// statuses returns every fota_status so far, each checked strictly.
func (g *fotaRig) statuses() []fota.Status {
	g.t.Helper()
	topic := topics.DeviceUp(g.id, topics.KindFOTAStatus)
	g.b.mu.Lock()
	msgs := slices.Clone(g.b.msgs)
	g.b.mu.Unlock()
	var out []fota.Status
	for _, m := range msgs {
		if m.topic != topic {
			continue
		}
		msg, err := envelope.Open(g.keys, topic, m.payload)
		if err != nil {
			g.t.Fatalf("fota_status envelope: %v", err)
		}
		s, err := fota.ParseStatus(msg.Body)
		if err != nil {
			g.t.Fatalf("fota_status %s: %v", msg.Body, err)
		}
		out = append(out, s)
	}
	return out
}

// waitStatus waits for a status that satisfies pred and returns it.
func (g *fotaRig) waitStatus(what string, pred func(fota.Status) bool) fota.Status {
	g.t.Helper()
	var got fota.Status
	g.waitFor(what, func() bool {
		for _, s := range g.statuses() {
			if pred(s) {
				got = s
				return true
			}
		}
		return false
	})
	return got
}

// hasState reports whether a status with state st (and version v, if set)
// was sent.
func (g *fotaRig) hasState(st fota.State, v string) bool {
	for _, s := range g.statuses() {
		if s.State == st && (v == "" || s.Version == v) {
			return true
		}
	}
	return false
}

func stateIs(st fota.State, version string) func(fota.Status) bool {
	return func(s fota.Status) bool { return s.State == st && (version == "" || s.Version == version) }
}

// lastBirth returns the latest signed online birth.
func (g *fotaRig) lastBirth() birth {
	bs := g.b.signedBirths(g.id, g.keys)
	return bs[len(bs)-1]
}

// bootRecord reads the boot record from flash.
func (g *fotaRig) bootRecord() BootRecord {
	g.t.Helper()
	raw, err := os.ReadFile(filepath.Join(g.dir, RecordBoot+".json"))
	if err != nil {
		g.t.Fatal(err)
	}
	var b BootRecord
	if err := json.Unmarshal(raw, &b); err != nil {
		g.t.Fatal(err)
	}
	return b
}
