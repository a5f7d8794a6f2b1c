package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// miniBackend answers a fleet's FOTA traffic over an inline mochi client:
// a manifest after every online birth, the chunks each request names.
type miniBackend struct {
	t    *testing.T
	srv  *mochi.Server
	man  fota.Manifest
	img  []byte
	keys map[string]*envelope.Keys
	in   chan packets.Packet

	mu       sync.Mutex // guards nonces, statuses, births
	nonces   map[string]uint64
	statuses map[string][]fota.Status
	births   map[string][]topics.Birth
}

func (b *miniBackend) seal(id, kind string, body []byte, binary bool) []byte {
	b.mu.Lock()
	b.nonces[id]++
	n := b.nonces[id]
	b.mu.Unlock()
	topic := topics.DeviceDown(id, kind)
	var raw []byte
	var err error
	if binary {
		raw, err = envelope.SealBinary(b.keys[id], topic, n, time.Now(), body)
	} else {
		raw, err = envelope.Seal(b.keys[id], topic, n, time.Now(), body, false, nil)
	}
	if err == nil {
		err = b.srv.Publish(topic, raw, false, 1)
	}
	if err != nil {
		b.t.Errorf("send %s to %s: %v", kind, id, err)
	}
	return raw
}

func (b *miniBackend) handle(pk packets.Packet) {
	t, err := topics.Parse(pk.TopicName)
	if err != nil {
		return
	}
	msg, err := envelope.Open(b.keys[t.Device], pk.TopicName, pk.Payload)
	if err != nil {
		return // the unsigned will
	}
	switch t.Kind {
	case topics.KindBirth:
		var bb topics.Birth
		_ = json.Unmarshal(msg.Body, &bb)
		b.mu.Lock()
		b.births[t.Device] = append(b.births[t.Device], bb)
		b.mu.Unlock()
		if bb.Online {
			body, _ := json.Marshal(fota.ManifestBody{FotaManifest: &b.man})
			b.seal(t.Device, topics.KindFOTAManifest, body, false)
		}
	case topics.KindFOTARequest:
		r, err := fota.ParseRequest(msg.Body)
		if err != nil {
			b.t.Errorf("request: %v", err)
			return
		}
		for _, i := range r.Chunks {
			off, end, _ := b.man.ChunkBounds(i)
			p, _ := fota.EncodeChunk(fota.Chunk{Version: r.Version, Index: i, Data: b.img[off:end]})
			b.seal(t.Device, topics.KindFOTAChunk, p, true)
		}
	case topics.KindFOTAStatus:
		s, err := fota.ParseStatus(msg.Body)
		if err != nil {
			b.t.Errorf("status: %v", err)
			return
		}
		b.mu.Lock()
		b.statuses[t.Device] = append(b.statuses[t.Device], s)
		b.mu.Unlock()
	}
}

func (b *miniBackend) succeeded(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.statuses[id] {
		if s.State == fota.StateSucceeded && s.Version == b.man.Version {
			return true
		}
	}
	return false
}

// TestRunFOTA: devicesim --fota-pubkey updates every device; with
// --fota-power-cut each loses power in the middle of the download, boots
// again and resumes.
func TestRunFOTA(t *testing.T) {
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })

	_, priv, err := fota.GenerateKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, pubPath, err := fota.WriteKeyPair(filepath.Join(t.TempDir(), "keys"), priv)
	if err != nil {
		t.Fatal(err)
	}
	img, err := fota.BuildTestImage("1.0.4", 40<<10, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	man, err := fota.BuildManifest(img, "1.0.4", 4<<10, priv)
	if err != nil {
		t.Fatal(err)
	}
	keysFile := writeKeys(t, 2)
	be := &miniBackend{t: t, srv: srv, man: man, img: img, keys: map[string]*envelope.Keys{},
		in: make(chan packets.Packet, 1024), nonces: map[string]uint64{},
		statuses: map[string][]fota.Status{}, births: map[string][]topics.Birth{}}
	for i := range 2 {
		k, err := envelope.DeriveKeys(bytes.Repeat([]byte{byte(i + 1)}, 32))
		if err != nil {
			t.Fatal(err)
		}
		be.keys[fmt.Sprintf("sim-%d", i)] = &k
	}
	err = srv.Subscribe(topics.FilterAllUp, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		pk.Payload = bytes.Clone(pk.Payload)
		be.in <- pk
	})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bstop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-bctx.Done():
				return
			case pk := <-be.in:
				be.handle(pk)
			}
		}
	})
	defer func() {
		bstop()
		wg.Wait()
	}()

	state := t.TempDir()
	var stdout, stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--keys", keysFile, "--broker", "tcp://" + l.Address(), "--state-dir", state,
			"--start-spread", "10ms", "--fota-pubkey", pubPath, "--fota-power-cut", "4"},
			func(string) string { return "" }, &stdout, &stderr)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !be.succeeded("sim-0") || !be.succeeded("sim-1") {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("update did not succeed; statuses %+v\n%s", be.statuses, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	for id, bs := range be.births {
		var versions []string
		for _, b := range bs {
			if b.Online {
				versions = append(versions, fmt.Sprintf("%s#%d", b.FirmwareVersion, b.BootCount))
			}
		}
		// Boot 1 (factory), boot 2 after the power cut, boot 3 on the new image.
		if got := strings.Join(versions, " "); got != "1.0.0#1 1.0.0#2 1.0.4#3" {
			t.Errorf("%s births: %s", id, got)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "sim-0", "slot_b")); err != nil {
		t.Errorf("no slot b on flash: %v", err)
	}
}
