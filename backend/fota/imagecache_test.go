package fota

import (
	"encoding/json"
	"testing"

	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// TestImageCache: chunks come from memory once an image was read; a
// replica whose stored image does not match the manifest sends nothing;
// without a cache chunks are read from Redis; the cache keeps within its
// bound, least recently used out first.
func TestImageCache(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	img := h.upload("1.0.4", 5000, false)
	want := func(t *testing.T, idx int) []byte {
		t.Helper()
		m := h.manifests("d1")
		off, end, _ := m[0].ChunkBounds(idx)
		return img[off:end]
	}
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	corrupt := func(t *testing.T) {
		t.Helper()
		if err := h.Redis.SetRange(h.Ctx, h.svc.fwImage("1.0.4"), 1100, "XXXX").Err(); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("served from memory", func(t *testing.T) {
		if err := request(t, h, "d1", "1.0.4", 0); err != nil {
			t.Fatal(err)
		}
		corrupt(t) // chunk 1 in Redis; the cached copy is intact
		if err := request(t, h, "d1", "1.0.4", 1); err != nil {
			t.Fatal(err)
		}
		got := h.chunks("d1")
		if len(got) != 2 || string(got[1].Data) != string(want(t, 1)) {
			t.Fatalf("chunks %d; chunk 1 not the uploaded bytes", len(got))
		}
	})

	t.Run("stored image checked on fill", func(t *testing.T) {
		s := h.newService() // another replica, cold cache
		before := len(h.chunks("d1"))
		err := s.HandleRequest(h.Ctx, "d1", requestMsg("1.0.4", 2))
		if err == nil {
			t.Fatal("a corrupted stored image was served")
		}
		if n := len(h.chunks("d1")); n != before {
			t.Fatalf("%d chunks sent from a corrupted image", n-before)
		}
	})

	t.Run("no cache: GETRANGE", func(t *testing.T) {
		h.cfg.ImageCacheBytes = -1
		s := h.newService()
		h.cfg.ImageCacheBytes = 0
		before := len(h.chunks("d1"))
		if err := s.HandleRequest(h.Ctx, "d1", requestMsg("1.0.4", 3)); err != nil {
			t.Fatal(err)
		}
		got := h.chunks("d1")
		if len(got) != before+1 || string(got[before].Data) != string(want(t, 3)) {
			t.Fatal("chunk 3 not served from Redis")
		}
	})

	t.Run("bounded, least recently used out", func(t *testing.T) {
		for _, v := range []string{"1.0.5", "1.0.6", "1.0.7"} {
			h.upload(v, 5000, false)
		}
		h.cfg.ImageCacheBytes = 2*5000 + 100
		s := h.newService()
		h.cfg.ImageCacheBytes = 0
		for _, v := range []string{"1.0.5", "1.0.6", "1.0.5", "1.0.7"} {
			f, err := s.load(h.Ctx, v)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.chunks(h.Ctx, f, []int{0}); err != nil {
				t.Fatal(err)
			}
		}
		c := s.images
		c.mu.Lock()
		defer c.mu.Unlock()
		_, has5 := c.items["1.0.5"]
		_, has6 := c.items["1.0.6"]
		_, has7 := c.items["1.0.7"]
		if !has5 || has6 || !has7 || c.size > c.max {
			t.Fatalf("cache holds 1.0.5 %v, 1.0.6 %v, 1.0.7 %v; %d of %d bytes", has5, has6, has7, c.size, c.max)
		}
	})
}

func requestMsg(version string, chunks ...int) envelope.Message {
	b, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: version, Chunks: chunks}})
	return envelope.Message{Body: b}
}
